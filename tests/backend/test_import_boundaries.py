"""The API process must never import torch, models or worker (DESIGN §2)."""

from __future__ import annotations

import subprocess
import sys

CODE = """
import sys
from backend.main import create_app
from backend.config import Settings
app = create_app(Settings(data_dir=sys.argv[1]))
bad = sorted(m for m in sys.modules if m == 'torch' or m.startswith(('torch.', 'models', 'worker', 'monai')))
print(','.join(bad))
"""


def test_api_app_does_not_import_torch(tmp_path) -> None:  # type: ignore[no-untyped-def]
    out = subprocess.run([sys.executable, "-c", CODE, str(tmp_path)], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "", f"API imported: {out.stdout.strip()}"
