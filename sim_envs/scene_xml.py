"""The MJCF (MuJoCo XML) of the tabletop scene (`sim_envs.tabletop`), and the sizes it is built with.

`build_scene_xml` puts together named parts: the compiler, physics and rendering options with the
default geom classes; the static world (lights, floor, table, cameras); the movable bodies of one
env (object slots, plates, the goal marker); the floating gripper with its two fingers; and the
constraints (the mocap weld, the finger coupling, the finger actuator, contact exclusions).
"""

from __future__ import annotations

PHYSICS_DT = 0.002
"""Simulation timestep in seconds."""
FINGER_TRAVEL = 0.04
"""Each finger slides 0..0.04 m outwards; the jaw opening is about 0.002..0.082 m."""
OBJECT_HALF = 0.02
"""Half-size of every object (cube half-edge, cylinder radius and half-height)."""
PLATE_RADIUS = 0.06
PLATE_HALF_HEIGHT = 0.004
GOAL_RADIUS = 0.04


def _options_xml() -> str:
    """Compiler, physics and rendering options, and the default geom/joint classes."""
    return f"""\
  <compiler angle="radian" autolimits="true"/>
  <option timestep="{PHYSICS_DT}" integrator="implicitfast" cone="elliptic" impratio="10"/>
  <visual>
    <global offwidth="128" offheight="128"/>
    <quality shadowsize="0"/>
    <headlight ambient="0.45 0.45 0.45" diffuse="0.55 0.55 0.55" specular="0.1 0.1 0.1"/>
    <rgba haze="0.6 0.7 0.8 1"/>
  </visual>
  <default>
    <geom solref="0.005 1" solimp="0.95 0.99 0.001" friction="1 0.005 0.0001"/>
    <default class="object">
      <geom condim="4" friction="0.5 0.01 0.001" rgba="1 1 1 1"/>
    </default>
    <default class="finger">
      <geom type="box" size="0.012 0.006 0.025" condim="4" friction="1.5 0.01 0.001" rgba="0.25 0.25 0.28 1"/>
      <joint type="slide" range="0 {FINGER_TRAVEL}" damping="8" armature="0.05" solreflimit="0.002 1"/>
    </default>
  </default>"""


def _static_world_xml() -> str:
    """The light, floor, table and the fixed cameras (front, top)."""
    return """\
    <light pos="0.3 -0.3 1.2" dir="-0.3 0.3 -1" directional="true" castshadow="false" diffuse="0.4 0.4 0.4"/>
    <geom name="floor" type="plane" pos="0 0 -0.4" size="3 3 0.1" rgba="0.35 0.37 0.4 1" contype="0" conaffinity="0"/>
    <geom name="table" type="box" pos="0 0 -0.02" size="0.45 0.4 0.02" rgba="0.62 0.5 0.38 1"
          friction="0.5 0.005 0.0001"/>
    <camera name="front" pos="0 -0.5 0.42" xyaxes="1 0 0 0 0.64 0.77" fovy="38"/>
    <camera name="top" pos="0 0 0.62" xyaxes="1 0 0 0 1 0" fovy="40"/>"""


def _object_xml(i: int) -> str:
    """Object slot i: a free body holding a cube geom and a cylinder geom (`reset` shows one)."""
    h = OBJECT_HALF
    return f"""
    <body name="obj{i}" pos="{0.1 * i} 0.3 {h}">
      <freejoint name="obj{i}_joint"/>
      <inertial pos="0 0 0" mass="0.05" diaginertia="1.4e-5 1.4e-5 1.4e-5"/>
      <geom name="obj{i}_cube" class="object" type="box" size="{h} {h} {h}"/>
      <geom name="obj{i}_cylinder" class="object" type="cylinder" size="{h} {h}"/>
    </body>"""


def _plate_xml(i: int) -> str:
    """Plate i: a flat cylinder (fixed body; `reset` moves it)."""
    return f"""
    <body name="plate{i}" pos="{0.15 * i} -0.4 {PLATE_HALF_HEIGHT}">
      <geom name="plate{i}" type="cylinder" size="{PLATE_RADIUS} {PLATE_HALF_HEIGHT}" friction="0.5 0.005 0.0001"/>
    </body>"""


def _goal_xml() -> str:
    """The goal marker: a thin disk without contacts."""
    return f"""
    <body name="goal" pos="0 0 0.0005">
      <geom name="goal" type="cylinder" size="{GOAL_RADIUS} 0.0005" contype="0" conaffinity="0" rgba="1 1 1 1"/>
    </body>"""


def _gripper_xml() -> str:
    """The mocap target and the floating gripper (palm, wrist camera, TCP site, two slide fingers)."""
    return """\
    <body name="mocap" mocap="true" pos="0 0 0.2"/>
    <body name="gripper" pos="0 0 0.2" gravcomp="1">
      <freejoint name="gripper_joint"/>
      <inertial pos="0 0 0.03" mass="0.5" diaginertia="0.002 0.002 0.002"/>
      <geom name="palm" type="box" pos="0 0 0.045" size="0.018 0.05 0.012" rgba="0.2 0.2 0.22 1"/>
      <geom name="wrist" type="cylinder" pos="0 0 0.08" size="0.015 0.025" rgba="0.6 0.6 0.65 1"
            contype="0" conaffinity="0"/>
      <site name="tcp" pos="0 0 0" size="0.004" rgba="1 0 0 0"/>
      <camera name="wrist" pos="0 -0.1 0.09" xyaxes="1 0 0 0 0.87 0.5" fovy="75"/>
      <body name="finger_left" pos="0 0.007 0.013" gravcomp="1">
        <joint name="finger_left" class="finger" axis="0 1 0"/>
        <geom name="finger_left" class="finger"/>
      </body>
      <body name="finger_right" pos="0 -0.007 0.013" gravcomp="1">
        <joint name="finger_right" class="finger" axis="0 -1 0"/>
        <geom name="finger_right" class="finger"/>
      </body>
    </body>"""


def _constraints_xml() -> str:
    """The mocap weld, the coupled fingers, the finger position actuator and contact exclusions."""
    return f"""\
  <equality>
    <weld body1="mocap" body2="gripper" solref="0.01 1" solimp="0.95 0.99 0.001"/>
    <joint joint1="finger_left" joint2="finger_right" polycoef="0 1 0 0 0" solref="0.005 1"/>
  </equality>
  <actuator>
    <position name="fingers" joint="finger_left" kp="600" ctrlrange="0 {FINGER_TRAVEL}" forcerange="-12 12"/>
  </actuator>
  <contact>
    <exclude body1="gripper" body2="finger_left"/>
    <exclude body1="gripper" body2="finger_right"/>
    <exclude body1="finger_left" body2="finger_right"/>
  </contact>"""


def build_scene_xml(n_objects: int, n_plates: int, goal_marker: bool) -> str:
    """MJCF of the table, `n_objects` object slots, `n_plates` plates, an optional goal disk and the
    gripper. Each object slot holds a cube geom and a cylinder geom; `reset` shows one of them."""
    objects = "".join(_object_xml(i) for i in range(n_objects))
    plates = "".join(_plate_xml(i) for i in range(n_plates))
    goal = _goal_xml() if goal_marker else ""
    return f"""
<mujoco model="ee_vla_tabletop">
{_options_xml()}
  <worldbody>
{_static_world_xml()}
    {objects}{plates}{goal}
{_gripper_xml()}
  </worldbody>
{_constraints_xml()}
</mujoco>
"""
