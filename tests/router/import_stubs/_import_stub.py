"""Import-only stand-ins for packages that `python -m sglang.bench_serving` imports but never uses.

The sglang wheel's `sglang/__init__.py` and bench_serving's own imports pull in `sglang.srt`
(server args, distributed state, model configs), which import torch, triton, torchvision, zmq,
starlette, datasets, sentencepiece and IPython at module level. The benchmark client itself uses
none of them: it needs aiohttp, numpy, requests, tqdm and a transformers tokenizer. This folder,
put *last* on PYTHONPATH, lets those imports succeed where the packages are absent (CI, a CPU
host): any attribute is a permissive placeholder, calls return placeholders, a call with one
callable (a decorator) returns it, and a placeholder works as a base class. Where a real package
is installed it comes first on the path and wins, so on a GPU host nothing here is used.

`tests/router/test_bench_serving.py` runs bench_serving against the router with it.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
import types

STUBBED: set[str] = set()
# transformers checks torch's version before it will register configs and image processors.
VERSIONS = {"torch": "2.11.0", "torchvision": "0.26.0"}
# Probed with hasattr() or try/except to choose a device: absent, so the probes answer "cpu".
ABSENT = {"npu", "hpu", "xpu", "musa", "mlu", "get_current_target"}
_CLASSES: dict[str, type] = {}


def _init_anything(self, *args, **kwargs) -> None:
    pass


class Placeholder:
    def __init__(self, name: str) -> None:
        self._name = name

    def __getattr__(self, key: str):
        if key.startswith("__") or key in ABSENT:
            raise AttributeError(key)
        return Placeholder(f"{self._name}.{key}")

    def __call__(self, *args, **kwargs):
        if len(args) == 1 and callable(args[0]) and not kwargs:
            return args[0]
        return Placeholder(self._name + "()")

    def __getitem__(self, key):
        return Placeholder(self._name + "[]")

    def __mro_entries__(self, bases):
        if self._name not in _CLASSES:
            _CLASSES[self._name] = type(self._name.rpartition(".")[2], (), {"__init__": _init_anything})
        return (_CLASSES[self._name],)

    def __or__(self, other):
        return self

    __ror__ = __and__ = __rand__ = __add__ = __radd__ = __sub__ = __rsub__ = __or__
    __mul__ = __rmul__ = __truediv__ = __floordiv__ = __mod__ = __pow__ = __neg__ = __or__

    def __bool__(self) -> bool:
        return False

    def __int__(self) -> int:
        return 0

    __index__ = __len__ = __int__

    def __float__(self) -> float:
        return 0.0

    def __lt__(self, other) -> bool:
        return False

    __le__ = __gt__ = __ge__ = __lt__

    def __eq__(self, other) -> bool:
        return self is other

    def __hash__(self) -> int:
        return id(self)

    def __iter__(self):
        return iter(())

    def __contains__(self, item) -> bool:
        return False

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> bool:
        return False

    def __repr__(self) -> str:
        return f"<import stub {self._name}>"


class StubModule(types.ModuleType):
    def __getattr__(self, key: str):
        if key.startswith("__") or key in ABSENT:
            raise AttributeError(key)
        return Placeholder(f"{self.__name__}.{key}")


class _Finder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Submodules of a stubbed package (`import torch.distributed as dist`)."""

    def find_spec(self, name, path, target=None):
        if "." in name and name.partition(".")[0] in STUBBED:
            return importlib.machinery.ModuleSpec(name, self, is_package=True)
        return None

    def create_module(self, spec):
        module = StubModule(spec.name)
        module.__path__ = []
        return module

    def exec_module(self, module) -> None:
        pass


_FINDER = _Finder()


def become(name: str) -> None:
    """Turn the package being imported (`name`) into a stub."""
    if not STUBBED:
        sys.meta_path.insert(0, _FINDER)
    STUBBED.add(name)
    module = sys.modules[name]
    module.__class__ = StubModule
    module.__version__ = VERSIONS.get(name, "0.0.0")
    print(f"import stub: {name} (not installed here)", file=sys.stderr)
