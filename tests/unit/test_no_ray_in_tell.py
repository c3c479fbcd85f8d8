import subprocess
import sys

# Imports every module of the package, then every public name of its lazy top level.
_CODE = """
import importlib, pkgutil, sys
import tell
for info in pkgutil.iter_modules(tell.__path__):
    importlib.import_module(f"tell.{info.name}")
missing = [name for name in tell.__all__ if getattr(tell, name, None) is None]
print(sorted(sys.modules.keys() & {"ray", "jobs"}), missing)
"""


def test_the_library_imports_neither_ray_nor_jobs_and_exports_every_name():
    out = subprocess.run([sys.executable, "-c", _CODE], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[] []"


def test_importing_tell_alone_is_light():
    code = "import sys, tell, tell.errors; print(sorted(sys.modules.keys() & {'torch', 'sklearn'}))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_a_refused_config_is_answered_without_importing_torch():
    """Configs validate on torch-free modules (tell.choices): a bad flag costs the CLI a
    fraction of a second, not torch's import."""
    code = (
        "import sys; from jobs import cli\n"
        "code = cli.main(['train', '--data', 'd', '--out', 'o', '--k', '1'])\n"
        "print(code, sorted(sys.modules.keys() & {'torch', 'ray'}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "2 []", out.stderr
    assert "The 'k' must be in [2, inf]. Got 1." in out.stderr
