"""A ROS 2-compatible DDS participant: topic naming, QoS profiles, readers and writers.

ROS 2 maps a topic `/ns/x` to the DDS topic `rt/ns/x` and a type `pkg/msg/T` to
`pkg::msg::dds_::T_` (carried by the IDL structs in `ros_nodes.dds.msgs`). QoS must match what the
ROS side offers or requests, so profiles are named after rclpy's:

| profile     | reliability | durability      | history       | used for                         |
|-------------|-------------|-----------------|---------------|----------------------------------|
| sensor_data | best effort | volatile        | keep last 5   | camera images                    |
| default     | reliable    | volatile        | keep last 10  | commands, instructions, states   |
| latched     | reliable    | transient local | keep last 1   | the sim bridge's instruction     |

Data representation is pinned to XCDR1 (what rmw_cyclonedds and rmw_fastrtps speak).

Anyone on the domain can write any bytes to a topic: a sample that does not decode (invalid UTF-8
in a string, a sequence longer than the sample) is dropped on its own, counted and reported through
`on_bad_sample`; the samples around it are still delivered.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import Any

from cyclonedds.core import DDSException, InstanceState, ReadCondition, SampleState, ViewState, WaitSet
from cyclonedds.domain import Domain, DomainParticipant
from cyclonedds.pub import DataWriter
from cyclonedds.qos import Policy, Qos
from cyclonedds.sub import DataReader
from cyclonedds.topic import Topic
from cyclonedds.util import duration

from ros_nodes.safety import CauseLog

log = logging.getLogger(__name__)

PROFILES = ("sensor_data", "default", "latched")


def ros_topic(name: str) -> str:
    """ROS 2 topic name -> DDS topic name (`/camera/image` or `camera/image` -> `rt/camera/image`).

    Relative names resolve against the root namespace (there is no node namespace here); private
    names (`~/x`) have no meaning without a node and are rejected.
    """
    if not name or name.startswith("~") or "//" in name or name.endswith("/") or any(c.isspace() for c in name):
        raise ValueError(f"{name!r} is not a ROS topic name usable over plain DDS (absolute or relative, no ~)")
    return "rt/" + name.lstrip("/")


def qos(profile: str, depth: int | None = None) -> Qos:
    """The DDS QoS of a ROS 2 QoS profile (see the module table)."""
    xcdr1 = Policy.DataRepresentation(use_cdrv0_representation=True)
    if profile == "sensor_data":
        return Qos(
            Policy.Reliability.BestEffort, Policy.Durability.Volatile, Policy.History.KeepLast(depth or 5), xcdr1
        )
    if profile == "default":
        return Qos(
            Policy.Reliability.Reliable(duration(milliseconds=100)),
            Policy.Durability.Volatile,
            Policy.History.KeepLast(depth or 10),
            xcdr1,
        )
    if profile == "latched":
        return Qos(
            Policy.Reliability.Reliable(duration(milliseconds=100)),
            Policy.Durability.TransientLocal,
            Policy.History.KeepLast(depth or 1),
            xcdr1,
        )
    raise ValueError(f"unknown QoS profile {profile!r}: one of {PROFILES}")


def loopback_config(domain_id: int | None = None) -> str:
    """A Cyclone DDS configuration that stays on 127.0.0.1: unicast discovery to local peers only.

    Loopback interfaces have no multicast, so discovery goes by unicast to the well-known ports of
    the local participant indices (auto-assigned, up to 32 participants).
    """
    dom = "any" if domain_id is None else str(domain_id)
    return (
        '<CycloneDDS xmlns="https://cdds.io/config">'
        f'<Domain Id="{dom}">'
        '<General><Interfaces><NetworkInterface address="127.0.0.1"/></Interfaces>'
        "<AllowMulticast>false</AllowMulticast></General>"
        "<Discovery><ParticipantIndex>auto</ParticipantIndex><MaxAutoParticipantIndex>32</MaxAutoParticipantIndex>"
        '<Peers><Peer address="127.0.0.1"/></Peers></Discovery>'
        "</Domain></CycloneDDS>"
    )


def write_serialized(writer: DataWriter, payload: bytes) -> None:
    """Send `payload` as one already-serialized (CDR, with encapsulation header) sample of `writer`'s
    topic, bypassing its type's serializer: fault injection (malformed samples) for tests and the soak
    benchmark. Raises when Cyclone refuses the bytes."""
    from cyclonedds._clayer import ddspy_write

    payload = bytes(payload) + b"\x00" * (-len(payload) % 4)
    ret = ddspy_write(writer._ref, payload)
    if ret < 0:
        raise DDSException(ret, f"writing {len(payload)} raw bytes on {writer.topic.name}")


def bad_sample_message(topic: str, error: BaseException) -> str:
    """One line naming the topic and why its sample did not decode (bounded length)."""
    return f"dropping a sample on {topic} that does not decode: {type(error).__name__}: {str(error)[:160]}"


class DdsGraph:
    """One DDS participant speaking ROS 2 names and QoS.

    Args:
        domain_id: the ROS_DOMAIN_ID of the graph to join.
        config: Cyclone DDS configuration (XML text or a file path/URI); None = Cyclone's defaults
            (which honour CYCLONEDDS_URI).
        on_bad_sample: called as `on_bad_sample(topic, error)` for each received sample that does
            not decode (dropped); None = count it in `bad_samples` and log once per topic and error type.
    """

    MAX_TAKE = 64
    """Samples taken per reader per `spin_once` (bounds one spin's work under a flood)."""

    def __init__(
        self,
        domain_id: int = 0,
        config: str | None = None,
        on_bad_sample: Callable[[str, BaseException], object] | None = None,
    ):
        if not 0 <= domain_id <= 232:
            raise ValueError(f"domain_id must be in [0, 232], got {domain_id}")
        self.domain_id = domain_id
        self._domain = None
        if config:
            if not config.lstrip().startswith("<") and os.path.exists(config):
                config = "file://" + os.path.abspath(config)
            self._domain = Domain(domain_id, config)
        self.participant = DomainParticipant(domain_id)
        self._topics: dict[str, Topic] = {}
        self.waitset = WaitSet(self.participant)
        self._conditions: list[tuple[ReadCondition, DataReader, Any, str]] = []
        self._causes = CauseLog(log)
        self.on_bad_sample = on_bad_sample or self._log_bad_sample
        self.bad_samples = 0
        """Received samples that did not decode (dropped)."""
        self.callback_errors = 0
        """Reader callbacks that raised (the sample is dropped; a bug in the callback)."""

    def topic(self, name: str, cls: type) -> Topic:
        dds_name = ros_topic(name)
        tp = self._topics.get(dds_name)
        if tp is None:
            tp = Topic(self.participant, dds_name, cls)
            self._topics[dds_name] = tp
        return tp

    def writer(self, name: str, cls: type, profile: str = "default", depth: int | None = None) -> DataWriter:
        return DataWriter(self.participant, self.topic(name, cls), qos=qos(profile, depth))

    def reader(
        self, name: str, cls: type, profile: str = "default", depth: int | None = None, callback: Any = None
    ) -> DataReader:
        """A reader; with `callback(sample)`, samples are delivered by `spin_once`."""
        r = DataReader(self.participant, self.topic(name, cls), qos=qos(profile, depth))
        if callback is not None:
            cond = ReadCondition(r, SampleState.Any | ViewState.Any | InstanceState.Any)
            self.waitset.attach(cond)
            self._conditions.append((cond, r, callback, name))
        return r

    def spin_once(self, timeout_s: float) -> int:
        """Wait up to `timeout_s` for samples and hand them to the reader callbacks; returns how many.

        Never raises for what a sample contains: one that does not decode goes to `on_bad_sample`,
        a callback that raises is logged (once per cause) and counted in `callback_errors`.
        """
        self.waitset.wait(duration(seconds=timeout_s))
        n = 0
        for _cond, r, cb, topic in self._conditions:
            for _ in range(self.MAX_TAKE):
                # One sample per take: cyclonedds decodes a whole batch in Python after removing it
                # from the reader, so one undecodable sample would lose the rest of its batch.
                try:
                    got = r.take(N=1)
                except DDSException as e:  # the reader itself failed, not a sample: retry next spin
                    self._causes.log(f"take:{topic}", f"taking from {topic} failed: {e}", level=logging.ERROR)
                    break
                except Exception as e:  # noqa: BLE001 - any decode error of a sample from the wire
                    self.bad_samples += 1
                    self.on_bad_sample(topic, e)
                    continue
                if not got:
                    break
                s = got[0]
                if getattr(s, "sample_info", None) is None or not s.sample_info.valid_data:
                    continue  # InvalidSample: a dispose/unregister notification, no data
                n += 1
                try:
                    cb(s)
                except Exception as e:  # noqa: BLE001 - a callback bug must not stop the spin loop
                    self.callback_errors += 1
                    if self._causes.log(
                        f"callback:{topic}:{type(e).__name__}",
                        f"the callback of {topic} raised {type(e).__name__}: {e} (sample dropped)",
                        level=logging.ERROR,
                    ):
                        log.debug("callback traceback", exc_info=True)
        return n

    def _log_bad_sample(self, topic: str, error: BaseException) -> None:
        self._causes.log(f"sample:{topic}:{type(error).__name__}", bad_sample_message(topic, error))

    def close(self) -> None:
        """Delete the participant (and everything in it)."""
        for cond, _r, _cb, _topic in self._conditions:
            try:
                self.waitset.detach(cond)
            except Exception:  # noqa: BLE001 - best effort during teardown
                pass
        self._conditions.clear()
        self._topics.clear()
        participant, self.participant = self.participant, None
        if participant is not None:
            # cyclonedds keeps every entity in a registry, so dropping the reference is not enough;
            # deleting the participant deletes its readers, writers and topics on the C side.
            participant.__del__()
        self._domain = None
