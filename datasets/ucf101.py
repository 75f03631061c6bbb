"""UCF-101 class names and ids, and the clip file-name scheme `v_<Class>_g<GG>_c<CC>.avi`."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from datasets.errors import DataError

# Official classInd.txt order, id = index + 1. It is case-insensitive alphabetical order, which a
# plain sorted() gets wrong twice (it puts HammerThrow before Hammering and JumpRope before
# JumpingJack), so the list is spelled out rather than computed.
CLASS_NAMES: tuple[str, ...] = (
    "ApplyEyeMakeup", "ApplyLipstick", "Archery", "BabyCrawling", "BalanceBeam",
    "BandMarching", "BaseballPitch", "Basketball", "BasketballDunk", "BenchPress",
    "Biking", "Billiards", "BlowDryHair", "BlowingCandles", "BodyWeightSquats",
    "Bowling", "BoxingPunchingBag", "BoxingSpeedBag", "BreastStroke", "BrushingTeeth",
    "CleanAndJerk", "CliffDiving", "CricketBowling", "CricketShot", "CuttingInKitchen",
    "Diving", "Drumming", "Fencing", "FieldHockeyPenalty", "FloorGymnastics",
    "FrisbeeCatch", "FrontCrawl", "GolfSwing", "Haircut", "Hammering",
    "HammerThrow", "HandstandPushups", "HandstandWalking", "HeadMassage", "HighJump",
    "HorseRace", "HorseRiding", "HulaHoop", "IceDancing", "JavelinThrow",
    "JugglingBalls", "JumpingJack", "JumpRope", "Kayaking", "Knitting",
    "LongJump", "Lunges", "MilitaryParade", "Mixing", "MoppingFloor",
    "Nunchucks", "ParallelBars", "PizzaTossing", "PlayingCello", "PlayingDaf",
    "PlayingDhol", "PlayingFlute", "PlayingGuitar", "PlayingPiano", "PlayingSitar",
    "PlayingTabla", "PlayingViolin", "PoleVault", "PommelHorse", "PullUps",
    "Punch", "PushUps", "Rafting", "RockClimbingIndoor", "RopeClimbing",
    "Rowing", "SalsaSpin", "ShavingBeard", "Shotput", "SkateBoarding",
    "Skiing", "Skijet", "SkyDiving", "SoccerJuggling", "SoccerPenalty",
    "StillRings", "SumoWrestling", "Surfing", "Swing", "TableTennisShot",
    "TaiChi", "TennisSwing", "ThrowDiscus", "TrampolineJumping", "Typing",
    "UnevenBars", "VolleyballSpiking", "WalkingWithDog", "WallPushups", "WritingOnBoard",
    "YoYo",
)  # fmt: skip
NUM_CLASSES = 101

# Case-insensitive because the dataset itself is inconsistent: the class folder is
# HandstandPushups but its video files are named v_HandStandPushups_gXX_cXX.avi.
_ID_BY_LOWER = {name.lower(): i + 1 for i, name in enumerate(CLASS_NAMES)}

_CLIP_RE = re.compile(r"^v_([A-Za-z0-9]+)_g(\d{1,3})_c(\d{1,3})(?:\.avi)?$")


@dataclass(frozen=True)
class ClipName:
    """The parts of a UCF-101 clip file name."""

    class_name: str
    group: int
    clip: int


def class_id(name: str) -> int:
    """Return the official id (1..101) of a UCF-101 class name, ignoring case."""
    try:
        return _ID_BY_LOWER[name.lower()]
    except KeyError:
        raise DataError(
            f"unknown UCF-101 class name {name!r}; expected one of the 101 names in "
            f"classInd.txt (e.g. {CLASS_NAMES[0]!r}, {CLASS_NAMES[-1]!r})"
        ) from None


def parse_clip_name(filename: str) -> ClipName:
    """Return the class, group and clip number in 'v_<Class>_g<GG>_c<CC>.avi' (path prefix ok).

    A class name that matches an official one case-insensitively comes back in the official
    spelling (v_HandStandPushups_... -> HandstandPushups); other names come back as written.
    """
    base = re.split(r"[/\\]", filename.strip())[-1]
    match = _CLIP_RE.match(base)
    if match is None:
        raise DataError(
            f"clip name {filename!r} is not in UCF-101 form 'v_<Class>_g<GG>_c<CC>.avi' "
            "(e.g. 'v_ApplyEyeMakeup_g08_c01.avi'); rename the clip or give official split lists"
        )
    name, group, clip = match.group(1), int(match.group(2)), int(match.group(3))
    known = _ID_BY_LOWER.get(name.lower())
    return ClipName(CLASS_NAMES[known - 1] if known else name, group, clip)


def clip_filename(class_name: str, group: int, clip: int) -> str:
    """Return the UCF-101 file name of a clip, e.g. 'v_ApplyEyeMakeup_g08_c01.avi'."""
    return f"v_{class_name}_g{group:02d}_c{clip:02d}.avi"


def read_class_index(path: str | Path) -> dict[str, int]:
    """Return class name -> id from a classInd.txt-style file ('<id> <name>' per line)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(f"cannot read class index {str(path)!r}: {err}; check the path") from None
    index: dict[str, int] = {}
    for lineno, line in enumerate(text.splitlines(), start=1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 2 or not parts[0].isdigit():
            raise DataError(
                f"{path}:{lineno}: expected '<id> <ClassName>' (like '1 ApplyEyeMakeup'), "
                f"got {line.strip()!r}; fix that line"
            )
        cid, name = int(parts[0]), parts[1]
        if name in index:
            raise DataError(f"{path}:{lineno}: class {name!r} is listed twice; remove one line")
        if cid in index.values():
            raise DataError(f"{path}:{lineno}: id {cid} is used twice; ids must be unique")
        index[name] = cid
    if not index:
        raise DataError(f"class index {path} lists no classes; expected '<id> <ClassName>' lines")
    return index
