"""errors.py draws its whole tree in its docstring (house style rule 4): every exception
class it defines appears in the drawing, so the drawing cannot fall behind the code."""

import inspect
import re

from loopsync import errors


def test_every_error_class_defined_in_errors_is_drawn_in_its_tree():
    defined = [cls for _, cls in inspect.getmembers(errors, inspect.isclass)
               if issubclass(cls, BaseException) and cls.__module__ == errors.__name__]
    assert len(defined) > 10
    drawing = errors.__doc__ or ""
    missing = [cls.__name__ for cls in defined  # a branch ("── Name") or a root line
               if not re.search(rf"(── |^ +){cls.__name__}\b", drawing, re.MULTILINE)]
    assert not missing, missing
