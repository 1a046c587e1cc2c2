# Demo model: training, evaluation and sample pictures (included by the top Makefile).

# Training run folder (checkpoints, logs) of `make demo-model`.
DEMO_RUN ?= runs/demo
# The shipped demo model's recipe (see predictor/models/demo/MODEL_CARD.md).
# v5 (issue 32): v3 (a quarter of the stream photo-like, anchors positive from IoU 0.4, localisation loss
# weighted 1.5, an EMA of the weights and batch-norm statistics, evaluated and exported, curves on both
# held-out sets) with the step's convolutions in bfloat16 where the CPU computes it natively, which buys
# 3300 steps instead of 2800 in about 55 min on 2 cores.
DEMO_TRAIN_ARGS ?= --steps 3300 --batch-size 32 --learning-rate 3e-3 --warmup-steps 100 --checkpoint-every 100 --seed 0 --default-score-threshold 0.4 --photo-fraction 0.25 --match-iou 0.4 --loc-weight 1.5 --ema-decay 0.998 --eval-every 200 --eval-count 100 --eval-photo-count 100 --bfloat16 auto
# VERSION of the exported demo model (served as its V2 model version); empty: the weights' digest.
DEMO_VERSION ?=
# Held-out images for `make eval`.
EVAL_COUNT ?= 500

.PHONY: demo-model demo-model-resume eval triton-repo

# Where `make triton-repo` writes the Triton model repository.
TRITON_REPO ?= out/triton

demo-model: $(STAMP) ## Retrain the shipped demo model from scratch (under 60 min on 2 CPU cores): weights, default NMS threshold, model card, drift references, docs/samples
	rm -rf $(DEMO_RUN)
	$(MAKE) demo-model-resume

demo-model-resume: $(STAMP) ## Continue an interrupted `make demo-model` from its last checkpoint
	$(PY) -m predictor.tools.train --out $(DEMO_RUN) $(DEMO_TRAIN_ARGS) --export predictor/models/demo \
		$(if $(DEMO_VERSION),--model-version $(DEMO_VERSION),)
	$(PY) -m predictor.tools.tune nms --model_dir predictor/models/demo --write \
		$(if $(DEMO_VERSION),--version $(DEMO_VERSION),)
	cp $(DEMO_RUN)/training_curve.json predictor/models/demo/eval/training_curve.json
	$(MAKE) model-card
	$(PY) -m predictor.tools.drift reference --model_dir predictor/models/demo --count 500
	$(PY) scripts/make_samples.py --out docs/samples

triton-repo: $(STAMP) ## Export a model (default the demo model; MODEL_DIR=...) as a Triton repository of its whole-detector ONNX graph in TRITON_REPO
	$(PY) -m predictor.ssd.export triton --out $(TRITON_REPO) $(if $(MODEL_DIR),--model_dir $(MODEL_DIR),)

eval: $(STAMP) ## COCO mAP of a model (default the demo model; MODEL_DIR=...) on EVAL_COUNT (500) held-out images of each set (plain, photo-like)
	$(PY) -m predictor.tools.evaluate --count $(EVAL_COUNT) --out out/eval $(if $(MODEL_DIR),--model_dir $(MODEL_DIR),)
	$(PY) -m predictor.tools.evaluate --style photo --count $(EVAL_COUNT) --out out/eval/photo $(if $(MODEL_DIR),--model_dir $(MODEL_DIR),)

.PHONY: model-card
# Score thresholds of the model card's operating-point tables (held-out images 200-399 of each set).
CARD_THRESHOLDS ?= 0.2,0.3,0.4,0.5

model-card: $(STAMP) ## Re-measure the demo model card's tables (COCO mAP, operating points; plain and photo-like held-out sets) and rewrite them in MODEL_CARD.md
	$(PY) -m predictor.tools.evaluate --count $(EVAL_COUNT) --out predictor/models/demo/eval
	$(PY) -m predictor.tools.evaluate --start 200 --count 200 --operating-points $(CARD_THRESHOLDS) \
		--out predictor/models/demo/eval
	$(PY) -m predictor.tools.evaluate --style photo --count $(EVAL_COUNT) --out predictor/models/demo/eval/photo
	$(PY) -m predictor.tools.evaluate --style photo --start 200 --count 200 --operating-points $(CARD_THRESHOLDS) \
		--out predictor/models/demo/eval/photo
	$(PY) scripts/model_card.py predictor/models/demo --readme README.md
