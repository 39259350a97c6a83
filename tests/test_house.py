"""House rules of the package, measured on its source with ``ast``: short functions, narrow public signatures."""

import ast
import pathlib

import attnscope

PACKAGE = pathlib.Path(attnscope.__file__).parent
MAX_LINES = 50
MAX_PARAMETERS = 8  # a public function with more takes an options dataclass instead


def functions():
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                yield f"{path.relative_to(PACKAGE)}:{node.lineno} {node.name}", node


def test_no_function_is_longer_than_fifty_lines():
    long = {
        where: node.end_lineno - node.lineno + 1
        for where, node in functions()
        if node.end_lineno - node.lineno + 1 > MAX_LINES
    }
    assert long == {}


def test_no_public_function_takes_more_than_eight_parameters():
    """Constructors (``__init__``) are the exception: a model's or a layer's options are its signature."""
    wide = {}
    for where, node in functions():
        arguments = node.args
        names = [
            a.arg for a in arguments.posonlyargs + arguments.args + arguments.kwonlyargs if a.arg not in ("self", "cls")
        ]
        if not node.name.startswith("_") and len(names) > MAX_PARAMETERS:
            wide[where] = len(names)
    assert wide == {}


def test_the_checker_would_notice_a_long_or_wide_function(tmp_path):
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_LINES))
    source = f"def long():\n{body}\n\ndef wide(a, b, c, d, e, f, g, h, i):\n    pass\n"
    nodes = {n.name: n for n in ast.walk(ast.parse(source)) if isinstance(n, ast.FunctionDef)}
    assert nodes["long"].end_lineno - nodes["long"].lineno + 1 > MAX_LINES
    assert len(nodes["wide"].args.args) > MAX_PARAMETERS
