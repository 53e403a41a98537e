"""Triton kernels of effreason (import needs Triton; callers check ``effreason._backends.has_triton()``).

Their sources live in the repository's top-level ``kernels/`` folder, which has no ``__init__.py`` on
purpose: from the clone root (the first entry of ``sys.path``) a folder without one is only a namespace
portion and loses to the installed PyPI ``kernels`` package that transformers imports, where a regular
package would shadow it. In a source checkout or an editable install this package adds that folder to
its ``__path__``; a wheel ships the same files here (``setup.py`` maps ``effreason.kernels`` to it).
"""

import os

__path__.append(os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(__file__))), "kernels"))
