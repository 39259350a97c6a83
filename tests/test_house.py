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


def code_lines(node: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    """A function's lines without its docstring: the limit is on code, and the public API's Google-style
    Args/Returns/Raises sections must not push a function over it."""
    lines = node.end_lineno - node.lineno + 1
    first = node.body[0]
    if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
        lines -= first.end_lineno - first.lineno + 1
    return lines


def test_no_function_is_longer_than_fifty_lines():
    long = {where: code_lines(node) for where, node in functions() if code_lines(node) > MAX_LINES}
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
    assert code_lines(nodes["long"]) > MAX_LINES
    docstring = '    """A short function.\n' + "    More text.\n" * 60 + '    """\n'
    documented = ast.parse("def short():\n" + docstring + "    return 1\n").body[0]
    assert code_lines(documented) == 2  # the def line and the return: the docstring is not counted
    assert len(nodes["wide"].args.args) > MAX_PARAMETERS
