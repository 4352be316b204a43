import os
import sys
from pathlib import Path

# GUI tests run without a display; set before any Qt import.
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

ROOT = Path(__file__).resolve().parent.parent
RESOURCES = ROOT / "resources"
TESTDATA = RESOURCES / "testdata"
PYTHON = sys.executable
