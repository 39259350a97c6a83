import ast
import pathlib

import pytest

import attnscope

PACKAGE = pathlib.Path(attnscope.__file__).parent
FORBIDDEN = {"torchvision", "timm", "pytorch_grad_cam"}


def imported_roots(path: pathlib.Path) -> set[str]:
    roots = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            roots.add(node.module.split(".")[0])
    return roots


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_module_imports_torchvision_or_timm(path):
    assert not imported_roots(path) & FORBIDDEN


def test_layers_room_imports_no_room_to_its_right():
    """DESIGN.md: layers knows nothing of models, data, engine, explain, retrieval or the CLI."""
    later_rooms = {"models", "data", "engine", "explain", "retrieval", "cli", "losses"}
    for path in (PACKAGE / "layers").rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("attnscope."):
                assert node.module.split(".")[1] not in later_rooms, f"{path.name} imports {node.module}"


def test_errors_form_one_hierarchy():
    for error in (attnscope.ConfigError, attnscope.DataError, attnscope.CheckpointError):
        assert issubclass(error, attnscope.AttnscopeError)
    assert issubclass(attnscope.ConfigError, ValueError)


def test_lazy_names_resolve_and_unknown_ones_fail():
    assert callable(attnscope.capture_attention) and callable(attnscope.create_attn)
    assert "create_attn" in dir(attnscope)
    with pytest.raises(AttributeError, match="no attribute 'create_model_x'"):
        attnscope.create_model_x  # noqa: B018
