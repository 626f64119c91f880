"""Every exception raised on purpose lives in errors.py and is drawn in its tree."""

import importlib
import inspect
import pkgutil

import loopsync
from loopsync import errors

# Private signals inside one module (never seen outside it), and the test doubles.
INTERNAL = {"loopsync.http.BodyTooLarge", "loopsync.http._DeadlinePassed"}
SKIPPED_PACKAGES = ("loopsync.sandbox", "loopsync.__main__")  # __main__ runs the CLI


def _modules():
    for info in pkgutil.walk_packages(loopsync.__path__, "loopsync."):
        if not info.name.startswith(SKIPPED_PACKAGES):
            yield importlib.import_module(info.name)


def test_no_module_but_errors_defines_an_exception():
    outside = sorted(
        f"{module.__name__}.{name}"
        for module in _modules()
        for name, obj in vars(module).items()
        if inspect.isclass(obj)
        and issubclass(obj, BaseException)
        and obj.__module__ == module.__name__
        and module is not errors
    )
    assert [name for name in outside if name not in INTERNAL] == []


def test_every_error_class_is_drawn_in_the_tree():
    drawing = errors.__doc__ or ""
    classes = [
        obj
        for obj in vars(errors).values()
        if inspect.isclass(obj)
        and issubclass(obj, BaseException)
        and obj.__module__ == errors.__name__
    ]
    assert classes
    missing = [
        cls.__name__
        for cls in classes
        if cls is not errors.LoopsyncError and cls.__name__ not in drawing
    ]
    assert missing == []
