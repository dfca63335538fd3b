"""Static checks of the 3D Slicer extension (Slicer itself cannot run here).

- The module and its self-test compile; the module imports against a stub of Slicer's Python API.
- Every ``self.ui.<name>`` of the module exists in the .ui file; every input widget of the .ui is bound
  (SlicerParameterName) to a parameter-node field of a type its GUI connector can represent, with the
  same choices, range and default; every field has a widget, so a saved scene restores the whole panel.
- The CMake files, evaluated by a small interpreter of the commands they use, package exactly the
  library's .py files, the module's resources, the library's data files and the shipped weights, and
  register the generic tests and both Slicer tests. A packaging that misses a file is reported.
- Icons are 128x128 PNGs; the root CMakeLists has every EXTENSION_* field; the docs call real Logic methods.
"""

from __future__ import annotations

import ast
import dataclasses
import glob
import importlib.util
import os
import py_compile
import re
import shutil
import struct
import sys
import types
import typing
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
MODULE_DIR = REPO / "MRITRUSFusion"
MODULE_SCRIPT = MODULE_DIR / "MRITRUSFusion.py"
SELF_TEST = MODULE_DIR / "Testing" / "Python" / "MRITRUSFusionSelfTest.py"
UI_FILE = MODULE_DIR / "Resources" / "UI" / "MRITRUSFusion.ui"
LIBRARY = "MRITRUSFusionLib"

#: Names fixed by the command-line contract (ARCHITECTURE.md).
CONTRACT_METHODS = ["auto", "rigid", "affine", "bspline", "attention-reg", "vit-affine", "ecmca-lstm"]
CONTRACT_MODELS = ["trus-unet", "concat", "reg-enhanced", "csad", "gland-trus", "gland-mri"]
CONTRACT_DEVICES = ["auto", "cpu", "cuda"]
#: Widget classes that hold a value the user sets: each must be bound to a parameter.
INPUT_WIDGETS = {"qMRMLNodeComboBox", "QComboBox", "ctkSliderWidget", "QCheckBox", "QSpinBox", "QDoubleSpinBox",
                 "QSlider", "ctkPathLineEdit", "QLineEdit", "QTextEdit", "ctkDirectoryButton"}
EXTENSION_FIELDS = ["HOMEPAGE", "CATEGORY", "CONTRIBUTORS", "DESCRIPTION", "ICONURL", "SCREENSHOTURLS", "DEPENDS"]


# --- compile and import -------------------------------------------------------------------------------

@pytest.mark.parametrize("path", [MODULE_SCRIPT, SELF_TEST], ids=lambda p: p.name)
def test_scripts_compile(path, tmp_path):
    py_compile.compile(str(path), cfile=str(tmp_path / "compiled.pyc"), doraise=True)


@dataclasses.dataclass
class Choice:
    choices: list


@dataclasses.dataclass
class WithinRange:
    minimum: float
    maximum: float


def _stub_slicer() -> dict:
    """Just enough of Slicer's Python API (names the module imports) to execute its top level."""
    slicer = types.ModuleType("slicer")
    for name in ("vtkMRMLNode", "vtkMRMLStorableNode", "vtkMRMLScalarVolumeNode", "vtkMRMLLabelMapVolumeNode",
                 "vtkMRMLSegmentationNode", "vtkMRMLTransformNode", "vtkMRMLMarkupsFiducialNode"):
        setattr(slicer, name, type(name, (), {}))
    slicer.app = types.SimpleNamespace(connect=lambda *args: None)
    i18n = types.ModuleType("slicer.i18n")
    i18n.tr = lambda text: text
    i18n.translate = lambda context, text: text
    wrapper = types.ModuleType("slicer.parameterNodeWrapper")
    wrapper.Choice, wrapper.WithinRange, wrapper.parameterNodeWrapper = Choice, WithinRange, lambda cls: cls
    scripted = types.ModuleType("slicer.ScriptedLoadableModule")
    for name in ("ScriptedLoadableModule", "ScriptedLoadableModuleLogic", "ScriptedLoadableModuleTest",
                 "ScriptedLoadableModuleWidget"):
        setattr(scripted, name, type(name, (), {}))
    util = types.ModuleType("slicer.util")
    util.VTKObservationMixin = type("VTKObservationMixin", (), {})
    return {"slicer": slicer, "slicer.i18n": i18n, "slicer.parameterNodeWrapper": wrapper,
            "slicer.ScriptedLoadableModule": scripted, "slicer.util": util,
            "qt": types.ModuleType("qt"), "vtk": types.ModuleType("vtk")}


@pytest.fixture
def module(monkeypatch):
    """MRITRUSFusion.py executed against the stub Slicer API."""
    for name, stub in _stub_slicer().items():
        monkeypatch.setitem(sys.modules, name, stub)
    monkeypatch.setattr(sys, "path", list(sys.path))
    spec = importlib.util.spec_from_file_location("MRITRUSFusion_under_test", MODULE_SCRIPT)
    loaded = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(loaded)
    return loaded


def test_module_finds_the_library_and_names_the_contract(module):
    assert Path(module.LIBRARY_PARENT_DIR) == REPO
    assert module.REGISTRATION_METHODS == CONTRACT_METHODS
    assert module.SEGMENTATION_MODELS == CONTRACT_MODELS
    assert module.DEVICES == CONTRACT_DEVICES
    assert module._optionalPath(Path()) is None and module._optionalPath(Path("w.pt")) == "w.pt"


# --- .ui and parameter node ---------------------------------------------------------------------------

def ui_widgets() -> dict:
    """objectName -> <widget> element of every widget in the .ui file."""
    return {widget.get("name"): widget for widget in ET.parse(UI_FILE).getroot().iter("widget")}


def ui_property(widget, name: str):
    """Value of a widget's own property: str, bool, float, or list for string lists / combo items."""
    for prop in widget.findall("property"):
        if prop.get("name") == name:
            value = prop[0]
            if value.tag == "stringlist":
                return [item.text for item in value]
            if value.tag == "bool":
                return value.text == "true"
            if value.tag in ("double", "number"):
                return float(value.text)
            return value.text
    return None


def combo_items(widget) -> list:
    return [ui_property(item, "text") for item in widget.findall("item")]


def ui_attributes_used() -> set:
    """Every NAME in ``self.ui.NAME`` of the module."""
    tree = ast.parse(MODULE_SCRIPT.read_text())
    return {node.attr for node in ast.walk(tree)
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute)
            and node.value.attr == "ui" and isinstance(node.value.value, ast.Name) and node.value.value.id == "self"}


def test_every_ui_name_used_in_code_exists():
    used = ui_attributes_used()
    assert used, "the module uses no self.ui widget"
    assert sorted(used - set(ui_widgets())) == []


def test_every_button_is_used_in_code():
    buttons = {name for name, widget in ui_widgets().items() if widget.get("class") == "QPushButton"}
    assert buttons >= {"applyButton", "cancelButton", "loadSampleButton"}
    assert sorted(buttons - ui_attributes_used()) == []


def test_ui_has_the_sections_and_run_controls():
    widgets = ui_widgets()
    sections = [ui_property(w, "text") for w in widgets.values() if w.get("class") == "ctkCollapsibleButton"]
    assert sections == ["Inputs", "Registration", "Segmentation", "Outputs", "Display"]
    assert widgets["progressBar"].get("class") == "QProgressBar"
    assert widgets["statusLabel"].get("class") == "QLabel"
    output_combos = ["outputTransformSelector", "warpedMriSelector", "trusTumourSegmentationSelector",
                     "mappedTargetsSelector"]
    for name in output_combos:  # "create new" combos: None means a new node on Apply
        assert ui_property(widgets[name], "noneEnabled") and ui_property(widgets[name], "addEnabled"), name


def parameter_fields(module) -> dict:
    return dict(module.MRITRUSFusionParameterNode.__annotations__)


def bound_widgets() -> dict:
    """SlicerParameterName -> widget element."""
    bound = {}
    for widget in ui_widgets().values():
        name = ui_property(widget, "SlicerParameterName")
        if name is not None:
            assert name not in bound, f"two widgets bound to {name}"
            bound[name] = widget
    return bound


def test_every_input_widget_is_bound_and_every_field_has_a_widget(module):
    unbound = [name for name, widget in ui_widgets().items()
               if widget.get("class") in INPUT_WIDGETS and ui_property(widget, "SlicerParameterName") is None]
    assert unbound == [], "input widgets whose value is not saved with the scene"
    fields = parameter_fields(module)
    assert sorted(set(bound_widgets()) - set(fields)) == [], "widgets bound to no parameter field"
    assert sorted(set(fields) - set(bound_widgets())) == [], "parameter fields without a widget"


def _split(annotation):
    """(base type, metadata list) of a possibly Annotated type."""
    if typing.get_origin(annotation) is typing.Annotated:
        base, *metadata = typing.get_args(annotation)
        return base, metadata
    return annotation, []


def _node_classes(annotation) -> list:
    members = typing.get_args(annotation) if typing.get_origin(annotation) is typing.Union else (annotation,)
    return sorted(member.__name__ for member in members
                  if isinstance(member, type) and member.__name__.startswith("vtkMRML"))


def _metadata(metadata, kind):
    found = [item for item in metadata if isinstance(item, kind)]
    return found[0] if found else None


def test_bound_widgets_can_represent_their_fields(module):
    defaults = module.MRITRUSFusionParameterNode.__dict__
    for name, annotation in parameter_fields(module).items():
        widget = bound_widgets()[name]
        widget_class = widget.get("class")
        base, metadata = _split(annotation)
        default = defaults.get(name)
        if widget_class == "qMRMLNodeComboBox":
            assert _node_classes(annotation), f"{name}: a node combo needs a node type"
            assert sorted(ui_property(widget, "nodeTypes")) == _node_classes(annotation), name
        elif widget_class == "QCheckBox":
            assert base is bool, name
            assert ui_property(widget, "checked") == default, f"{name}: .ui state differs from the default"
        elif widget_class == "QComboBox":
            choice = _metadata(metadata, Choice)
            assert base is str and choice is not None, f"{name}: a combo box needs Annotated[str, Choice(...)]"
            assert combo_items(widget) == list(choice.choices), name
            assert default in choice.choices, name
        elif widget_class == "ctkSliderWidget":
            bounds = _metadata(metadata, WithinRange)
            assert base is float and bounds is not None, f"{name}: a slider needs Annotated[float, WithinRange]"
            assert (ui_property(widget, "minimum"), ui_property(widget, "maximum")) == (bounds.minimum,
                                                                                        bounds.maximum), name
            assert ui_property(widget, "value") == default and bounds.minimum <= default <= bounds.maximum, name
        elif widget_class == "ctkPathLineEdit":
            assert base is Path, name
        else:
            pytest.fail(f"{name}: no check for widget class {widget_class}")


def test_model_inputs_cover_every_model(module):
    assert set(module.MODEL_INPUTS) == set(CONTRACT_MODELS)
    assert module.MODEL_INPUTS["gland-mri"] == ("mri",) and module.MODEL_INPUTS["csad"] == ("mri",)
    assert all(set(inputs) <= {"trus", "mri"} and inputs for inputs in module.MODEL_INPUTS.values())


# --- CMake ----------------------------------------------------------------------------------------------

_COMMAND = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)\s*\(")
_ARGUMENT = re.compile(r'"((?:[^"\\]|\\.)*)"|([^\s"()]+)')


def parse_cmake(text: str) -> list:
    """[(command, [(argument, quoted), ...]), ...] of a CMake file (no nested parentheses)."""
    text = re.sub(r"(?m)#.*$", "", text)
    commands, position = [], 0
    while True:
        match = _COMMAND.search(text, position)
        if match is None:
            return commands
        end = _closing_parenthesis(text, match.end())
        arguments = [(argument.group(1), True) if argument.group(1) is not None else (argument.group(2), False)
                     for argument in _ARGUMENT.finditer(text[match.end():end])]
        commands.append((match.group(1).lower(), arguments))
        position = end + 1


def _closing_parenthesis(text: str, start: int) -> int:
    """Index of the ``)`` ending the argument list that starts at ``start`` (quotes respected)."""
    quoted = False
    for index in range(start, len(text)):
        character = text[index]
        if character == '"' and text[index - 1] != "\\":
            quoted = not quoted
        elif character == ")" and not quoted:
            return index
    raise AssertionError("unbalanced parenthesis in CMake file")


class CMakeModel:
    """Evaluates the commands the extension's CMake files use; fails on any other command or variable."""

    IGNORED = {"cmake_minimum_required", "project", "find_package", "include", "message", "if", "else", "endif"}

    def __init__(self, source_dir: Path, binary_dir: Path, variables: dict):
        self.variables = {"CMAKE_CURRENT_SOURCE_DIR": str(source_dir), "CMAKE_CURRENT_BINARY_DIR": str(binary_dir),
                          **variables}
        self.source_dir = source_dir
        self.copies = {}  # configure_file destination -> source
        self.module = None  # arguments of slicerMacroBuildScriptedModule by keyword
        self.unittests, self.subdirectories, self.commands = [], [], []

    def expand(self, text: str) -> str:
        return re.sub(r"\$\{(\w+)\}", lambda match: self.variables[match.group(1)], text)

    def arguments(self, raw) -> list:
        values = []
        for text, quoted in raw:
            value = self.expand(text)
            values.extend([value] if quoted else [part for part in value.split(";") if part])
        return values

    def run(self, commands) -> "CMakeModel":
        index = 0
        while index < len(commands):
            name, raw = commands[index]
            self.commands.append(name)
            if name == "foreach":
                body, index = self._loop_body(commands, index)
                variable, *items = self.arguments(raw)
                for item in items:
                    self.variables[variable] = item
                    self.run(body)
            elif name not in self.IGNORED:
                getattr(self, f"_{name}")(self.arguments(raw))
            index += 1
        return self

    @staticmethod
    def _loop_body(commands, start):
        depth = 0
        for index in range(start + 1, len(commands)):
            depth += {"foreach": 1, "endforeach": -1}.get(commands[index][0], 0)
            if depth < 0:
                return commands[start + 1:index], index
        raise AssertionError("foreach without endforeach")

    def _set(self, arguments):
        self.variables[arguments[0]] = ";".join(arguments[1:])

    def _list(self, arguments):
        assert arguments[0] == "APPEND", arguments
        self.variables[arguments[1]] = ";".join(filter(None, [self.variables.get(arguments[1], "")] + arguments[2:]))

    def _get_filename_component(self, arguments):
        variable, path, mode = arguments
        assert mode == "ABSOLUTE", mode
        self.variables[variable] = os.path.normpath(path)

    def _file(self, arguments):
        mode, variable, *rest = arguments
        assert mode in ("GLOB", "GLOB_RECURSE"), mode
        relative = None
        if rest[0] == "RELATIVE":
            relative, rest = rest[1], rest[2:]
        matches = []
        for pattern in (item for item in rest if item != "CONFIGURE_DEPENDS"):
            folder, name = os.path.split(pattern)
            found = Path(folder).rglob(name) if mode == "GLOB_RECURSE" else Path(folder).glob(name)
            matches += [str(path) for path in found if path.is_file()]
        if relative:
            matches = [os.path.relpath(path, relative) for path in matches]
        self.variables[variable] = ";".join(sorted(matches))

    def _configure_file(self, arguments):
        source, destination, mode = arguments
        assert mode == "COPYONLY" and Path(source).is_file(), arguments
        self.copies[os.path.normpath(destination)] = os.path.normpath(source)

    def _slicermacrobuildscriptedmodule(self, arguments):
        keywords, current = {}, None
        for argument in arguments:
            if argument in ("NAME", "SCRIPTS", "RESOURCES", "WITH_GENERIC_TESTS"):
                current = argument
                keywords[current] = []
            else:
                keywords[current].append(argument)
        self.module = keywords

    def _slicer_add_python_unittest(self, arguments):
        assert arguments[0] == "SCRIPT", arguments
        self.unittests.append(self.source_dir / arguments[1])

    def _add_subdirectory(self, arguments):
        self.subdirectories.append(self.source_dir / arguments[0])


def evaluate_cmake(cmake_file: Path, binary_dir: Path, variables: dict) -> CMakeModel:
    model = CMakeModel(cmake_file.parent, binary_dir, variables)
    return model.run(parse_cmake(cmake_file.read_text()))


def _files(folder: Path, pattern: str) -> set:
    return {str(path) for path in folder.rglob(pattern) if path.is_file()}


def packaging_problems(repo: Path) -> list:
    """What the module's CMake would package wrongly: files not listed, listed files that do not
    exist, and files that would land in the wrong place."""
    build = repo / "_build"
    scripted_modules = build / "lib" / "qt-scripted-modules"
    module_dir = repo / "MRITRUSFusion"
    model = evaluate_cmake(module_dir / "CMakeLists.txt", build / "MRITRUSFusion",
                           {"CMAKE_BINARY_DIR": str(build), "Slicer_QTSCRIPTEDMODULES_LIB_DIR": "lib/qt-scripted-modules"})
    problems = []
    if model.module is None:
        return ["no slicerMacroBuildScriptedModule"]

    packaged = {}  # source file -> path inside qt-scripted-modules
    for script in model.module.get("SCRIPTS", []):
        if os.path.isabs(script):
            packaged[model.copies.get(os.path.normpath(script), script)] = os.path.relpath(script, build / "MRITRUSFusion")
        else:
            packaged[os.path.normpath(module_dir / script)] = script
    for destination, source in model.copies.items():
        if Path(destination).is_relative_to(scripted_modules):
            packaged[source] = os.path.relpath(destination, scripted_modules)
    library = repo / LIBRARY
    expected = {str(module_dir / "MRITRUSFusion.py"): "MRITRUSFusion.py"}
    for pattern in ("*.py", "*.yaml", "*.json", "*.pt"):
        expected.update({path: os.path.relpath(path, repo) for path in _files(library, pattern)})
    for pattern in ("*.pt", "*.json"):
        expected.update({path: os.path.relpath(path, repo) for path in _files(repo / "Resources" / "Models", pattern)})
    for source, place in sorted(expected.items()):
        if source not in packaged:
            problems.append(f"{os.path.relpath(source, repo)} is not packaged")
        elif packaged[source] != place:
            problems.append(f"{os.path.relpath(source, repo)} would be installed as {packaged[source]}, not {place}")
    problems += [f"{os.path.relpath(source, repo)} is packaged but is not a file of the project"
                 for source in sorted(set(packaged) - set(expected))]

    resources = {str(module_dir / item) for item in model.module.get("RESOURCES", [])}
    actual_resources = _files(module_dir / "Resources", "*")
    problems += [f"resource {os.path.relpath(p, repo)} is not listed" for p in sorted(actual_resources - resources)]
    problems += [f"listed resource {os.path.relpath(p, repo)} does not exist" for p in sorted(resources - actual_resources)]

    if "WITH_GENERIC_TESTS" not in model.module:
        problems.append("generic tests are not enabled")
    if module_dir / "MRITRUSFusion.py" not in model.unittests:
        problems.append("the module's own test is not registered")
    return problems


def test_module_cmake_packages_exactly_the_project_files():
    assert packaging_problems(REPO) == []


def test_packaging_check_reports_an_unlisted_library_file(tmp_path):
    """An explicit list that forgets a library file fails the check; the real globbing CMake does not."""
    fake = tmp_path / "repo"
    shutil.copytree(MODULE_DIR, fake / "MRITRUSFusion", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("__init__.py", "io/__init__.py", "io/added_later.py", "configs/demo.yaml"):
        (fake / LIBRARY / name).parent.mkdir(parents=True, exist_ok=True)
        (fake / LIBRARY / name).write_text("")
    (fake / "Resources" / "Models").mkdir(parents=True)
    (fake / "Resources" / "Models" / "trus-unet.pt").write_bytes(b"weights")
    assert packaging_problems(fake) == [], "the globbing CMake misses a file added later"

    cmake = fake / "MRITRUSFusion" / "CMakeLists.txt"
    explicit = cmake.read_text().replace("  ${MODULE_LIB_SCRIPTS}\n",
                                         "  ../MRITRUSFusionLib/__init__.py\n  ../MRITRUSFusionLib/io/__init__.py\n")
    assert explicit != cmake.read_text()
    cmake.write_text(explicit)
    problems = packaging_problems(fake)
    assert "MRITRUSFusionLib/io/added_later.py is not packaged" in problems
    assert any("__init__.py would be installed as ../MRITRUSFusionLib" in problem for problem in problems)


def test_slicer_tests_are_registered():
    module = evaluate_cmake(MODULE_DIR / "CMakeLists.txt", REPO / "_build",
                            {"CMAKE_BINARY_DIR": "/build", "Slicer_QTSCRIPTEDMODULES_LIB_DIR": "lib"})
    assert MODULE_DIR / "Testing" in module.subdirectories
    testing = evaluate_cmake(MODULE_DIR / "Testing" / "CMakeLists.txt", REPO / "_build", {})
    assert testing.subdirectories == [MODULE_DIR / "Testing" / "Python"]
    python = evaluate_cmake(MODULE_DIR / "Testing" / "Python" / "CMakeLists.txt", REPO / "_build", {})
    assert python.unittests == [SELF_TEST] and SELF_TEST.is_file()


def test_root_cmake_describes_the_extension():
    commands = parse_cmake((REPO / "CMakeLists.txt").read_text())
    model = CMakeModel(REPO, REPO / "_build", {"Slicer_USE_FILE": "use", "Slicer_EXTENSION_GENERATE_CONFIG": "g",
                                               "Slicer_EXTENSION_CPACK": "c"}).run(commands)
    for field in EXTENSION_FIELDS:
        assert model.variables.get(f"EXTENSION_{field}"), f"EXTENSION_{field} is not set"
    assert ("project", [("MRITRUSFusion", False)]) in commands
    assert ("find_package", [("Slicer", False), ("REQUIRED", False)]) in commands
    included = [arguments[0][0] for name, arguments in commands if name == "include"]
    assert included == ["${Slicer_USE_FILE}", "${Slicer_EXTENSION_GENERATE_CONFIG}", "${Slicer_EXTENSION_CPACK}"]
    assert model.subdirectories == [MODULE_DIR]
    icon_url = model.variables["EXTENSION_ICONURL"]
    assert (REPO / icon_url.split("/main/", 1)[1]).is_file(), "the icon URL names no file of the repository"
    screenshot = model.variables["EXTENSION_SCREENSHOTURLS"].rsplit("/", 1)[1]
    assert screenshot in (REPO / "Resources" / "Screenshots" / "README.md").read_text()


# --- icons and docs -------------------------------------------------------------------------------------

@pytest.mark.parametrize("icon", [REPO / "Resources" / "Icons" / "MRITRUSFusion.png",
                                  MODULE_DIR / "Resources" / "Icons" / "MRITRUSFusion.png"],
                         ids=["extension", "module"])
def test_icons_are_128_pixel_pngs(icon):
    header = icon.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n" and header[12:16] == b"IHDR"
    assert struct.unpack(">II", header[16:24]) == (128, 128)


def logic_methods() -> set:
    tree = ast.parse(MODULE_SCRIPT.read_text())
    logic = next(node for node in tree.body if isinstance(node, ast.ClassDef) and node.name == "MRITRUSFusionLogic")
    return {node.name for node in logic.body if isinstance(node, ast.FunctionDef)}


def test_docs_call_existing_logic_methods():
    calls = set()
    for doc in glob.glob(str(REPO / "docs" / "slicer.md")) + [str(MODULE_SCRIPT)]:
        calls |= set(re.findall(r"\blogic\.(\w+)\(", Path(doc).read_text()))
    assert {"register", "segment", "mapTargets", "showFusion"} <= calls
    assert sorted(calls - logic_methods()) == []
