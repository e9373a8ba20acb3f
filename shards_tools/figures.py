"""Articulated stick figures ("virtual humans") and the parametric actions they perform.

A pose is a handful of joint angles; `ACTIONS[name](phase)` gives the pose at a phase of the
action's cycle (radians), and `skeleton(pose)` turns it into 2-D joint positions by forward
kinematics. Units are body heights, y up, origin between the feet when standing.

Angle convention: 0 points straight down, positive turns a limb *outward* (away from the body's
midline) for the figure's two sides, so one pose function describes a symmetric figure.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

# segment lengths in body heights
HEAD_RADIUS, NECK, TORSO = 0.075, 0.05, 0.30
UPPER_ARM, FOREARM, THIGH, SHIN = 0.16, 0.15, 0.23, 0.22
SHOULDER_HALF_WIDTH, HIP_HALF_WIDTH = 0.07, 0.045
STAND_HIP = THIGH + SHIN


@dataclass
class Pose:
    """Joint angles (radians) and root offset of one frame; per-side lists are [left, right]."""

    root: tuple[float, float] = (0.0, 0.0)  # hip offset from the standing hip (x, y)
    lean: float = 0.0  # torso angle from upright, positive = towards +x
    arm: list[float] = field(default_factory=lambda: [0.25, 0.25])  # upper arm, outward
    elbow: list[float] = field(default_factory=lambda: [0.1, 0.1])  # forearm relative to upper arm
    leg: list[float] = field(default_factory=lambda: [0.08, 0.08])  # thigh, outward
    knee: list[float] = field(default_factory=lambda: [0.0, 0.0])  # shin relative to thigh
    width: float = 1.0  # horizontal squash (spin: cos of the turn angle)
    profile: bool = False  # side view: limbs swing in +x/-x instead of mirroring


def _direction(angle: float) -> np.ndarray:
    return np.array([math.sin(angle), -math.cos(angle)])


def skeleton(pose: Pose) -> dict[str, np.ndarray]:
    """Joint positions (x, y) for a pose, in body heights, y up."""
    hip = np.array([pose.root[0], STAND_HIP + pose.root[1]])
    up = -_direction(pose.lean)  # torso direction (points up when lean == 0)
    across = np.array([up[1], -up[0]])  # unit vector towards +x, perpendicular to the torso
    neck = hip + TORSO * up
    joints = {"hip": hip, "neck": neck, "head": neck + (NECK + HEAD_RADIUS) * up}
    for side_index, (side, sign) in enumerate((("l", -1.0), ("r", 1.0))):
        mirror = 1.0 if pose.profile else sign
        shoulder = neck - 0.02 * up + sign * SHOULDER_HALF_WIDTH * across * (0.0 if pose.profile else 1.0)
        arm_angle = pose.lean + mirror * pose.arm[side_index]
        elbow = shoulder + UPPER_ARM * _direction(arm_angle)
        hand = elbow + FOREARM * _direction(arm_angle + mirror * pose.elbow[side_index])
        hip_side = hip + sign * HIP_HALF_WIDTH * across * (0.0 if pose.profile else 1.0)
        leg_angle = mirror * pose.leg[side_index]
        knee = hip_side + THIGH * _direction(leg_angle)
        foot = knee + SHIN * _direction(leg_angle + mirror * pose.knee[side_index])
        joints.update({f"shoulder_{side}": shoulder, f"elbow_{side}": elbow, f"hand_{side}": hand,
                       f"hip_{side}": hip_side, f"knee_{side}": knee, f"foot_{side}": foot})
    if pose.width != 1.0:
        centre = hip[0]
        for point in joints.values():
            point[0] = centre + (point[0] - centre) * pose.width
    return joints


# bones as (joint, joint) pairs, grouped by body part so renderers can colour parts differently
BONES = {
    "torso": [("hip", "neck"), ("hip_l", "hip_r"), ("shoulder_l", "shoulder_r")],
    "arms": [("shoulder_l", "elbow_l"), ("elbow_l", "hand_l"), ("shoulder_r", "elbow_r"), ("elbow_r", "hand_r")],
    "legs": [("hip_l", "knee_l"), ("knee_l", "foot_l"), ("hip_r", "knee_r"), ("knee_r", "foot_r")],
}


def _pulse(x: float) -> float:
    """0..1..0 once per cycle, peaking at phase pi/2."""
    return max(0.0, math.sin(x))


def _ease(x: float) -> float:
    """0..1..0 once per cycle, smooth, starting at 0."""
    return 0.5 - 0.5 * math.cos(x)


def wave(p: float) -> Pose:
    return Pose(arm=[0.25, 2.5], elbow=[0.1, 0.2 + 0.7 * math.sin(2 * p)])


def jump(p: float) -> Pose:
    air, crouch = 0.25 * _pulse(p), _pulse(-p)
    return Pose(root=(0.0, air - 0.08 * crouch), arm=[0.3 + 8 * air] * 2, elbow=[0.2] * 2,
                leg=[0.08 + 0.35 * crouch] * 2, knee=[-0.8 * crouch] * 2)


def squat(p: float) -> Pose:
    depth = _ease(p)
    return Pose(root=(0.0, -0.17 * depth), arm=[0.25 + 1.3 * depth] * 2, elbow=[0.1] * 2,
                leg=[0.08 + 0.95 * depth] * 2, knee=[-1.75 * depth] * 2)


def walk(p: float) -> Pose:
    swing = 0.5 * math.sin(p)
    return Pose(root=(0.0, -0.015 * abs(math.cos(p))), arm=[-0.6 * swing, 0.6 * swing],
                elbow=[-0.3, -0.3], leg=[swing, -swing],
                knee=[-0.5 * _pulse(-p), -0.5 * _pulse(p)], profile=True)


def clap(p: float) -> Pose:
    closed = _ease(p) ** 2
    return Pose(arm=[0.7 + 0.5 * (1 - closed)] * 2, elbow=[-1.2 - 0.95 * closed] * 2)


def kick(p: float) -> Pose:
    lift = _pulse(p) ** 2
    return Pose(arm=[1.2, 1.2], elbow=[0.1, 0.1], leg=[0.08, 0.08 + 1.4 * lift],
                knee=[0.0, -0.9 * (1 - lift) * _pulse(p)], lean=-0.15 * lift)


def punch(p: float) -> Pose:
    reach = [_pulse(p) ** 2, _pulse(-p) ** 2]
    return Pose(arm=[0.4 + 1.15 * r for r in reach], elbow=[2.5 * (1 - r) for r in reach],
                leg=[0.2, 0.2], root=(0.0, -0.02))


def spin(p: float) -> Pose:
    turn = math.cos(p)
    width = math.copysign(max(abs(turn), 0.12), turn)
    return Pose(arm=[1.5, 1.5], elbow=[0.0, 0.0], width=width)


def bend(p: float) -> Pose:
    lean = 0.8 * math.sin(p)
    return Pose(lean=lean, arm=[0.25 - 0.3 * lean, 0.25 + 0.3 * lean], leg=[0.15, 0.15])


def jumping_jack(p: float) -> Pose:
    spread = _ease(p)
    return Pose(root=(0.0, 0.05 * _pulse(2 * p)), arm=[0.25 + 2.5 * spread] * 2, elbow=[0.1] * 2,
                leg=[0.08 + 0.35 * spread] * 2)


ACTIONS = {f.__name__: f for f in (wave, jump, squat, walk, clap, kick, punch, spin, bend, jumping_jack)}
