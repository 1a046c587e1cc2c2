"""Models shipped inside the package."""

from pathlib import Path

#: The demo model: an SSD trained by this project on synthetic shapes (see demo/MODEL_CARD.md).
DEMO_MODEL_DIR = Path(__file__).resolve().parent / "demo"
