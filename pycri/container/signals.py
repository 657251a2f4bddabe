"""The signal that stops a container: the CRI config's, else the image's StopSignal, else SIGTERM."""

from __future__ import annotations

import signal
from typing import Any

from pycri.api import api_pb2
from pycri.errors import InvalidArgument

_RT_PLUS = "SIGRTMINPLUS"
_RT_MINUS = "SIGRTMAXMINUS"


def signal_number(name: str) -> int:
    """'SIGTERM', 'TERM', '15', 'SIGRTMIN+3' or 'SIGRTMINPLUS3' as a number; ValueError if unknown."""
    text = name.strip().upper()
    if text.isdigit():
        number = int(text)
        if not 0 < number <= signal.SIGRTMAX:
            raise ValueError(f"signal {name!r} out of range")
        return number
    if not text.startswith("SIG"):
        text = "SIG" + text
    text = text.replace("RTMIN+", "RTMINPLUS").replace("RTMAX-", "RTMAXMINUS")
    if text.startswith(_RT_PLUS):
        return signal.SIGRTMIN + int(text.removeprefix(_RT_PLUS))
    if text.startswith(_RT_MINUS):
        return signal.SIGRTMAX - int(text.removeprefix(_RT_MINUS))
    aliases = {"SIGCLD": "SIGCHLD", "SIGPOLL": "SIGIO", "SIGIOT": "SIGABRT"}
    try:
        return int(signal.Signals[aliases.get(text, text)])
    except KeyError:
        raise ValueError(f"unknown signal {name!r}") from None


def stop_signal(config: api_pb2.ContainerConfig, image_config: dict[str, Any]) -> int:
    if config.stop_signal != api_pb2.Signal.SIGNAL_RUNTIME_DEFAULT:
        if config.stop_signal not in api_pb2.Signal.values():
            raise InvalidArgument(f"config.stop_signal: unknown signal {config.stop_signal}")
        return signal_number(api_pb2.Signal.Name(config.stop_signal).removeprefix("SIGNAL_"))
    image_signal = (image_config.get("config") or {}).get("StopSignal")
    if image_signal:
        try:
            return signal_number(str(image_signal))
        except ValueError as exc:
            raise InvalidArgument(f"image config StopSignal: {exc}") from None
    return int(signal.SIGTERM)


def signal_enum(number: int) -> int:
    """The CRI Signal value for a signal number (RUNTIME_DEFAULT when CRI has no name for it)."""
    if signal.SIGRTMIN <= number <= signal.SIGRTMAX:
        offset = number - signal.SIGRTMIN
        name = "SIGRTMIN" if offset == 0 else f"SIGRTMINPLUS{offset}"
        if number > signal.SIGRTMIN + 15:
            back = signal.SIGRTMAX - number
            name = "SIGRTMAX" if back == 0 else f"SIGRTMAXMINUS{back}"
    else:
        name = signal.Signals(number).name
    try:
        return api_pb2.Signal.Value("SIGNAL_" + name)
    except ValueError:
        return api_pb2.Signal.SIGNAL_RUNTIME_DEFAULT
