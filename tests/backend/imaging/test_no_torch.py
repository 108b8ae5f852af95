from __future__ import annotations

import subprocess
import sys


def test_imaging_does_not_import_torch() -> None:
    code = (
        "import sys\n"
        "import backend.imaging\n"
        "from backend.imaging import dicom_series, geometry, nifti, pmap, png, seg, synthetic\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in {'torch', 'monai', 'models', 'worker'})\n"
        "print(bad)\n"
        "sys.exit(1 if bad else 0)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
