"""The IDL structs are the official ROS 2 messages on the wire: same fields, same CDR bytes as rosbags."""

import dataclasses

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

pytest.importorskip("cyclonedds")
rosbags_typesys = pytest.importorskip("rosbags.typesys")

from ros_nodes.dds import msgs  # noqa: E402
from ros_nodes.dds.transport import qos, ros_topic  # noqa: E402

STORES = [rosbags_typesys.Stores.ROS2_HUMBLE, rosbags_typesys.Stores.ROS2_JAZZY]
BASE = {
    "int32": "int32",
    "uint32": "uint32",
    "uint8": "uint8",
    "byte": "byte",
    "float64": "float64",
    "string": "str",
    "bool": "bool",
}


def idl_fields(cls):
    return [(f.name, f.type) for f in dataclasses.fields(cls)]


@pytest.mark.parametrize("store", STORES, ids=lambda s: s.name)
@pytest.mark.parametrize("ros_type", sorted(msgs.ROS_TYPES))
def test_fields_match_the_official_definition(store, ros_type):
    ts = rosbags_typesys.get_typestore(store)
    _consts, defs = ts.fielddefs[ros_type]
    cls = msgs.ROS_TYPES[ros_type]
    assert cls.__idl_typename__ == msgs.dds_type_name(ros_type)
    ours = idl_fields(cls)
    assert [n for n, _ in ours] == [n for n, _ in defs], "field names/order differ from the .msg"
    for (name, typ), (_n, (kind, spec)) in zip(ours, defs, strict=True):
        text = str(typ)
        if kind.name == "BASE":
            assert BASE[spec[0]] in text, f"{ros_type}.{name}: {text} vs {spec}"
        elif kind.name == "NAME":
            assert typ is msgs.ROS_TYPES[spec], f"{ros_type}.{name}"
        elif kind.name == "SEQUENCE":
            (sub_kind, sub), bound = spec
            assert bound == 0 and "sequence" in text
            if sub_kind.name == "BASE":
                assert BASE[sub[0]] in text, f"{ros_type}.{name}: {text} vs {sub}"
            else:
                assert msgs.ROS_TYPES[sub].__name__ in text
        else:  # pragma: no cover - no arrays in these messages
            pytest.fail(f"unexpected field kind {kind}")


def to_rosbags(ts, ros_type, value):
    """Our IDL instance -> the rosbags message of the same content."""
    _consts, defs = ts.fielddefs[ros_type]
    cls = ts.types[ros_type]
    kwargs = {}
    for name, (kind, spec) in defs:
        v = getattr(value, name)
        if kind.name == "NAME":
            kwargs[name] = to_rosbags(ts, spec, v)
        elif kind.name == "SEQUENCE":
            (sub_kind, sub), _ = spec
            if sub_kind.name == "NAME":
                kwargs[name] = [to_rosbags(ts, sub, x) for x in v]
            elif sub[0] == "string":
                kwargs[name] = list(v)
            else:
                kwargs[name] = np.asarray(list(v), dtype={"uint8": np.uint8, "float64": np.float64}[sub[0]])
        else:
            kwargs[name] = v
    return cls(**kwargs)


texts = st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=0x2FF), max_size=12)
f64 = st.floats(allow_nan=False, width=64)
f64s = st.lists(f64, max_size=6)
times = st.builds(msgs.Time, sec=st.integers(-(2**31), 2**31 - 1), nanosec=st.integers(0, 2**32 - 1))
headers = st.builds(msgs.Header, stamp=times, frame_id=texts)
STRATEGIES = {
    "std_msgs/msg/String": st.builds(msgs.String, data=texts),
    "std_msgs/msg/Bool": st.builds(msgs.Bool, data=st.booleans()),
    "std_msgs/msg/Float64MultiArray": st.builds(
        msgs.Float64MultiArray,
        layout=st.builds(
            msgs.MultiArrayLayout,
            dim=st.lists(
                st.builds(msgs.MultiArrayDimension, label=texts, size=st.integers(0, 99), stride=st.integers(0, 99)),
                max_size=2,
            ),
            data_offset=st.integers(0, 2**32 - 1),
        ),
        data=f64s,
    ),
    "sensor_msgs/msg/Image": st.builds(
        msgs.Image,
        header=headers,
        height=st.integers(0, 9),
        width=st.integers(0, 9),
        encoding=texts,
        is_bigendian=st.integers(0, 1),
        step=st.integers(0, 99),
        data=st.binary(max_size=33).map(list),
    ),
    "sensor_msgs/msg/JointState": st.builds(
        msgs.JointState, header=headers, name=st.lists(texts, max_size=3), position=f64s, velocity=f64s, effort=f64s
    ),
    "geometry_msgs/msg/TwistStamped": st.builds(
        msgs.TwistStamped,
        header=headers,
        twist=st.builds(
            msgs.Twist,
            linear=st.builds(msgs.Vector3, x=f64, y=f64, z=f64),
            angular=st.builds(msgs.Vector3, x=f64, y=f64, z=f64),
        ),
    ),
    "trajectory_msgs/msg/JointTrajectory": st.builds(
        msgs.JointTrajectory,
        header=headers,
        joint_names=st.lists(texts, max_size=3),
        points=st.lists(
            st.builds(
                msgs.JointTrajectoryPoint,
                positions=f64s,
                velocities=f64s,
                accelerations=f64s,
                effort=f64s,
                time_from_start=st.builds(msgs.Duration, sec=st.integers(0, 99), nanosec=st.integers(0, 10**9 - 1)),
            ),
            max_size=3,
        ),
    ),
    "diagnostic_msgs/msg/DiagnosticArray": st.builds(
        msgs.DiagnosticArray,
        header=headers,
        status=st.lists(
            st.builds(
                msgs.DiagnosticStatus,
                level=st.integers(0, 3),
                name=texts,
                message=texts,
                hardware_id=texts,
                values=st.lists(st.builds(msgs.KeyValue, key=texts, value=texts), max_size=3),
            ),
            max_size=2,
        ),
    ),
}


@pytest.mark.parametrize("ros_type", sorted(STRATEGIES))
def test_cdr_bytes_equal_rosbags(ros_type):
    ts = rosbags_typesys.get_typestore(rosbags_typesys.Stores.ROS2_HUMBLE)

    @settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(STRATEGIES[ros_type])
    def check(value):
        ours = bytes(value.serialize())
        theirs = bytes(ts.serialize_cdr(to_rosbags(ts, ros_type, value), ros_type))
        assert ours == theirs
        back = type(value).deserialize(theirs)
        assert bytes(back.serialize()) == theirs

    check()


def test_every_message_type_used_is_covered():
    used = {
        "sensor_msgs/msg/Image",
        "std_msgs/msg/String",
        "sensor_msgs/msg/JointState",
        "geometry_msgs/msg/TwistStamped",
        "std_msgs/msg/Float64MultiArray",
        "trajectory_msgs/msg/JointTrajectory",
        "diagnostic_msgs/msg/DiagnosticArray",
        "std_msgs/msg/Bool",
    }
    assert used <= set(STRATEGIES)


def test_messages_builders_produce_rosbags_identical_bytes():
    from ros_nodes.diagnostics import Status
    from ros_nodes.messages import build_command, build_diagnostics, build_image
    from ros_nodes.params import PolicyParams
    from ros_nodes.runner import Emit

    ts = rosbags_typesys.get_typestore(rosbags_typesys.Stores.ROS2_JAZZY)
    img = build_image(msgs, np.arange(12, dtype=np.uint8).reshape(2, 2, 3), (3, 4), "cam")
    raw = bytes(img.serialize())
    decoded = ts.deserialize_cdr(raw, "sensor_msgs/msg/Image")
    assert decoded.encoding == "rgb8" and decoded.step == 6 and decoded.data.tolist() == list(range(12))
    diag = build_diagnostics(msgs, [Status(1, "n", "m", "h", {"k": "v"})], (1, 2))
    d = ts.deserialize_cdr(bytes(diag.serialize()), "diagnostic_msgs/msg/DiagnosticArray")
    assert d.status[0].level == 1 and d.status[0].values[0].key == "k"
    p = PolicyParams(command_type="trajectory", joint_names=tuple("abcdefg"))
    traj = build_command(msgs, Emit("trajectory", np.ones((2, 7)), "chunk", 1, 0.05), p, (0, 0))
    t = ts.deserialize_cdr(bytes(traj.serialize()), "trajectory_msgs/msg/JointTrajectory")
    assert t.joint_names == list("abcdefg") and t.points[1].time_from_start.nanosec == 100_000_000


def test_ros_naming_and_qos():
    assert ros_topic("/camera/image_raw") == "rt/camera/image_raw"
    assert ros_topic("instruction") == "rt/instruction"
    assert msgs.dds_type_name("sensor_msgs/msg/Image") == "sensor_msgs::msg::dds_::Image_"
    for bad in ("~/private", "", "a//b", "a b"):
        with pytest.raises(ValueError):
            ros_topic(bad)
    with pytest.raises(ValueError, match="unknown QoS profile"):
        qos("fast")
    assert "BestEffort" in str(qos("sensor_data")) and "Reliable" in str(qos("default"))
    assert "TransientLocal" in str(qos("latched"))
