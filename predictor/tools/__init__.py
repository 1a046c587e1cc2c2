"""Offline tools: training, COCO evaluation, capacity planning, the local-server harness."""
