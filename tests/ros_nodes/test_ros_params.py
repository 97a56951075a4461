import dataclasses
import json
import logging
import re
import shutil
from pathlib import Path

import pytest
import yaml

from ee_vla import DEFAULT_POLICY
from ros_nodes.params import (
    COMMAND_TYPES,
    DEFAULT_COMMAND_TOPICS,
    DEFAULT_CONTROL_HZ,
    PolicyParams,
    cross_check,
    field_docs,
    param_specs,
    validate_param,
    with_contract,
)

REPO = Path(__file__).resolve().parents[2]


def test_defaults_are_valid_and_safe():
    p = PolicyParams()
    assert p.dry_run is True
    assert p.resolved_command_topic == DEFAULT_COMMAND_TOPICS["twist"]
    assert cross_check(p) is None


@pytest.mark.parametrize(
    "name,value,fragment",
    [
        ("command_type", "velocity", "twist|array|trajectory"),
        ("control_hz", -1.0, "(0, 2000]"),
        ("control_hz", float("nan"), "(0, 2000]"),
        ("dry_run", "yes", "true or false"),
        ("image_topic", "", "non-empty"),
        ("image_topic", "cam era", "not a valid"),
        ("action_low", [0.0, float("inf")], "finite"),
        ("image_timeout_s", -1.0, "positive"),
        ("decoder", "beam", "ceed|ceed_cap|ceed_2pass|jacobi|ar"),
        ("engine", "turbo", "compiled"),
        ("joint_names", ["a", "a"], "repeat"),
        ("keep_dims_on_zero", [-1], "indices"),
        ("image_width", 1.5, "integer"),
        ("chunk_start", "image", "arrival|observation"),
    ],
)
def test_invalid_values_are_rejected_with_a_reason(name, value, fragment):
    reason = validate_param(name, value)
    assert reason is not None and fragment in reason
    with pytest.raises(ValueError, match=f"PolicyParams.{name}"):
        PolicyParams(**{name: value})


def test_unknown_parameter():
    assert "unknown parameter" in validate_param("speed", 1)
    with pytest.raises(ValueError, match="unknown parameter"):
        PolicyParams.from_mapping({"speed": 1})


def test_cross_field_checks_name_the_field():
    with pytest.raises(ValueError, match="action_high: has 2 values"):
        PolicyParams(action_low=(-1.0,) * 7, action_high=(1.0, 1.0))
    with pytest.raises(ValueError, match="action_low: exceeds"):
        PolicyParams(action_low=(1.0,) * 7, action_high=(0.0,) * 7)
    with pytest.raises(ValueError, match="joint_names"):
        PolicyParams(command_type="trajectory")
    with pytest.raises(ValueError, match="keep_dims_on_zero"):
        PolicyParams(keep_dims_on_zero=(9,))
    with pytest.raises(ValueError, match="schedule: .*chunk_start=.observation.* on_new_chunk=.hold."):
        PolicyParams(chunk_start="observation", on_new_chunk="hold")
    assert PolicyParams(chunk_start="observation", on_new_chunk="blend")
    assert PolicyParams(command_type="trajectory", joint_names=tuple(f"j{i}" for i in range(7)))


def test_specs_cover_every_field_with_descriptions_and_ros_types():
    specs = param_specs()
    docs = field_docs(PolicyParams)
    assert [s.name for s in specs] == list(PolicyParams.__dataclass_fields__)
    for s in specs:
        assert s.description and s.description == docs[s.name]
        assert s.ros_type in {"bool", "integer", "double", "string", "double_array", "integer_array", "string_array"}
        assert not isinstance(s.default, tuple)
    assert {s.name for s in specs if s.live} >= {"dry_run", "action_low", "action_high"}


def test_ros_lists_round_trip():
    p = PolicyParams.from_mapping({"action_low": [-0.5] * 7, "joint_names": [], "control_hz": 20})
    assert p.action_low == (-0.5,) * 7 and p.joint_names == ()
    assert PolicyParams.from_mapping(p.to_ros()) == p


def node_params(path: Path, fqn: str) -> dict:
    """The parameters a node named `fqn` takes from a params file, by rclpy's rule (rclpy's node.cpp,
    Humble and Jazzy): a top-level key is a node name pattern, "/" prepended if missing, in which
    "/*" becomes the regex "(/\\w+)" (so "/**" matches any number of namespace levels); every key
    that matches the whole name applies, later keys over earlier ones."""
    doc = yaml.safe_load(path.read_text())
    out: dict = {}
    for key, value in doc.items():
        pattern = key if key.startswith("/") else "/" + key
        if re.fullmatch(pattern.replace("/*", r"(/\w+)"), fqn):
            out.update(value["ros__parameters"])
    return out


def test_node_params_follows_rclpy_matching():
    """The helper above on rcl's own wildcard cases."""
    for key, fqn, match in [
        ("policy_node", "/policy_node", True),
        ("policy_node", "/robot1/policy_node", False),
        ("/**", "/robot1/arm/anything", True),
        ("/**/policy_node", "/policy_node", True),
        ("/**/policy_node", "/robot1/policy_node", True),
        ("/**/policy_node", "/robot1/sim_bridge", False),
        ("/*/policy_node", "/policy_node", False),
    ]:
        pattern = key if key.startswith("/") else "/" + key
        assert bool(re.fullmatch(pattern.replace("/*", r"(/\w+)"), fqn)) is match, (key, fqn)


@pytest.mark.parametrize("fqn", ["/policy_node", "/robot1/policy_node", "/robot1/arm/my_policy"])
def test_config_yaml_is_valid_under_any_node_name_and_namespace(fqn):
    values = node_params(REPO / "config" / "ee_vla.yaml", fqn)
    assert values, f"config/ee_vla.yaml gives {fqn} no parameters"
    p = PolicyParams.from_mapping(values)
    assert p.dry_run is True  # the shipped default must not move a robot
    types = {s.name: s.ros_type for s in param_specs()}
    for name, v in values.items():  # YAML types must match the declared ROS types
        if types[name] == "bool":
            assert isinstance(v, bool), name


@pytest.mark.parametrize("namespace", ["", "/robot1", "/lab/robot2"])
def test_sim_yaml_gives_each_node_its_own_parameters_in_any_namespace(namespace):
    from ros_nodes.sim_bridge import SimBridgeParams

    path = REPO / "config" / "sim.yaml"
    base = node_params(REPO / "config" / "ee_vla.yaml", f"{namespace}/policy_node")
    policy_values = {**base, **node_params(path, f"{namespace}/policy_node")}
    bridge_values = node_params(path, f"{namespace}/sim_bridge")
    p = PolicyParams.from_mapping(policy_values)
    s = SimBridgeParams(**bridge_values)
    assert p.dry_run is False and p.command_type == "array"
    # the policy node's rate comes from the policy: the shipped one records the suite's 10 Hz
    assert p.control_hz == 0.0
    assert with_contract(dataclasses.replace(p, model_path=str(DEFAULT_POLICY)))[0].control_hz == 10.0
    assert s.control_hz == 0.0  # the bridge's own value, not the policy node's
    assert p.command_type == s.command_type and p.resolved_command_topic == s.resolved_command_topic
    assert p.image_topic == s.image_topic and p.instruction_topic == s.instruction_topic
    assert p.wrist_image_topic == s.wrist_image_topic == "wrist_camera/image_raw" and s.wrist_camera is False


def test_every_command_type_has_a_default_topic():
    assert set(DEFAULT_COMMAND_TOPICS) == set(COMMAND_TYPES)


def test_engine_names_match_the_engine_factory():
    from ee_vla.engine import ENGINES as FACTORY_ENGINES
    from ee_vla.engine.static import COMPILE_MODES as ENGINE_COMPILE_MODES
    from ros_nodes.params import COMPILE_MODES, ENGINES

    assert ENGINES == FACTORY_ENGINES
    assert COMPILE_MODES == tuple(ENGINE_COMPILE_MODES)
    assert PolicyParams(compile_mode="frozen").compile_mode == "frozen"
    with pytest.raises(ValueError, match="compile_mode"):
        PolicyParams(compile_mode="fastest")


def test_decoders_are_the_decoding_presets():
    from ee_vla.decoding.config import PRESETS
    from ros_nodes.params import DECODERS

    assert set(DECODERS) == set(PRESETS)


def test_control_rate_defaults_to_the_policys_and_a_different_one_is_named(tmp_path):
    shipped = PolicyParams(model_path=str(DEFAULT_POLICY))
    assert shipped.control_hz == 0.0
    assert with_contract(shipped) == (dataclasses.replace(shipped, control_hz=10.0, use_joint_state=True), None)
    faster, warning = with_contract(dataclasses.replace(shipped, control_hz=20.0))
    assert faster.control_hz == 20.0 and "20 Hz" in warning and "10 Hz" in warning
    assert with_contract(dataclasses.replace(shipped, control_hz=10.0))[1] is None
    # a policy that records no rate, or no readable policy (loading it reports that): the default
    old = tmp_path / "old"
    shutil.copytree(DEFAULT_POLICY, old)
    extra = json.loads((old / "ee_vla.json").read_text())
    del extra["contract"]
    (old / "ee_vla.json").write_text(json.dumps(extra))
    for path in (str(old), str(tmp_path / "missing"), ""):
        resolved, warning = with_contract(PolicyParams(model_path=path))
        assert resolved.control_hz == DEFAULT_CONTROL_HZ and warning is None, path


def test_the_runner_runs_at_the_policys_rate_and_warns_once_about_another(caplog):
    from ros_nodes.runner import PolicyRunner

    with caplog.at_level(logging.WARNING):
        r = PolicyRunner(PolicyParams(model_path=str(DEFAULT_POLICY)), policy_factory=lambda p: None)
    assert r.params.control_hz == 10.0 and not caplog.records
    # the node hands its parameters again (control_hz still 0): nothing waits for a reconfigure
    assert r.update_params(PolicyParams(model_path=str(DEFAULT_POLICY), dry_run=False)) == []
    assert r.params.control_hz == 10.0 and r.params.dry_run is False
    with caplog.at_level(logging.WARNING):
        r = PolicyRunner(PolicyParams(model_path=str(DEFAULT_POLICY), control_hz=20.0), policy_factory=lambda p: None)
        assert r.update_params(dataclasses.replace(r.params, dry_run=False)) == []
    assert r.params.control_hz == 20.0
    assert [m for m in caplog.messages if "trained on actions at 10 Hz" in m] == [caplog.messages[0]]
    assert len(caplog.messages) == 1


def test_docs_ros_md_lists_every_parameter_with_its_default():
    def shown(default) -> str:
        if isinstance(default, bool):
            return "true" if default else "false"
        return '""' if default == "" else str(default)

    rows = [
        line.split("|")
        for line in (REPO / "docs" / "ros.md").read_text().splitlines()
        if line.startswith("| `") and line.count("|") >= 6
    ]
    documented = {cells[1].strip().strip("`"): cells[3].strip().strip("`") for cells in rows}
    for spec in param_specs():
        assert spec.name in documented, f"docs/ros.md has no row for {spec.name}"
        if isinstance(spec.default, list):
            assert documented[spec.name].startswith("["), spec.name
        else:
            assert documented[spec.name] == shown(spec.default), (spec.name, documented[spec.name])


def test_joint_state_input_is_on_for_a_policy_that_reads_agent_pos(tmp_path, caplog):
    from ros_nodes.runner import PolicyRunner

    shipped = PolicyParams(model_path=str(DEFAULT_POLICY))  # reads a 7-dim agent_pos
    assert shipped.use_joint_state is False and with_contract(shipped)[0].use_joint_state is True
    blind = tmp_path / "no_proprio"
    blind.mkdir()
    extra = json.loads((DEFAULT_POLICY / "ee_vla.json").read_text())
    extra["proprio_tokenizer"] = None
    (blind / "ee_vla.json").write_text(json.dumps(extra))
    assert with_contract(PolicyParams(model_path=str(blind)))[0].use_joint_state is False
    assert with_contract(PolicyParams(model_path=str(blind), use_joint_state=True))[0].use_joint_state is True
    with caplog.at_level(logging.INFO, logger="ros_nodes.runner"):
        r = PolicyRunner(shipped, policy_factory=lambda p: None)
    assert r.params.use_joint_state and any("use_joint_state: on" in m for m in caplog.messages)
