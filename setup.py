"""Packaging, the one part pyproject.toml cannot say: advpatch installs from three folders
(``src/advpatch``, and the top-level ``components/`` and ``pipelines/`` as ``advpatch.components``
and ``advpatch.pipelines``), and every package under them is found here, so that no list of
packages is kept by hand (a hand-kept list once left six packages out of the runtime image)."""

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py

ROOTS = {"advpatch": "src/advpatch", "advpatch.components": "components", "advpatch.pipelines": "pipelines"}


def packages() -> list:
    found = []
    for name, folder in ROOTS.items():
        found += [name] + [f"{name}.{sub}" for sub in find_packages(folder)]
    return found


class fresh_build_py(build_py):
    """build_py into an emptied build/lib: setuptools reuses the folder, so a module moved or removed
    since the last local build would otherwise ride along into the wheel (the runtime image)."""

    def run(self) -> None:
        import shutil

        shutil.rmtree(self.build_lib, ignore_errors=True)
        super().run()


setup(package_dir=ROOTS, packages=packages(), cmdclass={"build_py": fresh_build_py})
