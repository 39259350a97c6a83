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


ROOMS = ["layers", "models", "data", "losses", "engine", "training", "explain", "retrieval", "serve", "demo", "cli"]


def attnscope_imports(path: pathlib.Path) -> set[str]:
    """Second-level names of the attnscope modules a file imports (``attnscope.models.x`` -> ``models``)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        modules = (
            [a.name for a in node.names]
            if isinstance(node, ast.Import)
            else ([node.module] if isinstance(node, ast.ImportFrom) and node.module and node.level == 0 else [])
        )
        names.update(m.split(".")[1] for m in modules if m.startswith("attnscope."))
    return names


@pytest.mark.parametrize("room", ROOMS[:-1])
def test_a_room_imports_only_rooms_to_its_left(room):
    """DESIGN.md: layers knows nothing of models, models nothing of data or engine, and so on."""
    later = set(ROOMS[ROOMS.index(room) + 1 :])
    files = list((PACKAGE / room).rglob("*.py")) if (PACKAGE / room).is_dir() else [PACKAGE / f"{room}.py"]
    for path in (f for f in files if f.exists()):
        assert not attnscope_imports(path) & later, f"{path.relative_to(PACKAGE)} imports a room to its right"


def test_errors_form_one_hierarchy():
    for error in (attnscope.ConfigError, attnscope.DataError, attnscope.CheckpointError):
        assert issubclass(error, attnscope.AttnscopeError)
    assert issubclass(attnscope.ConfigError, ValueError)


def test_lazy_names_resolve_and_unknown_ones_fail():
    assert callable(attnscope.capture_attention) and callable(attnscope.create_attn)
    assert "create_attn" in dir(attnscope)
    with pytest.raises(AttributeError, match="no attribute 'create_model_x'"):
        attnscope.create_model_x  # noqa: B018
