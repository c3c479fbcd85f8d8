import subprocess
import sys


def test_importing_tell_does_not_import_ray():
    code = "import sys, tell, tell.estimator, tell.checkpoint; print('ray' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
