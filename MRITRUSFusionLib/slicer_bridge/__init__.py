"""Qt-free helpers the 3D Slicer module uses to run the ``mritrus-fusion`` command line.

- :mod:`.runner`: start the CLI in its own process group, parse its JSON progress stream, cancel the
  whole process tree, report the CLI's ``error: ...`` line on failure.
- :mod:`.exchange`: a temporary folder holding the files passed to and from the CLI.
- :mod:`.dependencies`: which Python packages are missing and the pip commands that install them
  (CPU or CUDA torch) without downgrading what is already installed.

Nothing is imported here, so ``dependencies`` stays importable in a bare Slicer Python before the
library's own dependencies (tqdm, torch, ...) are installed.
"""
