"""WebSocket close codes. 4000-4499: reconnect (and resume by cursor); 4500-4999: do not
reconnect without fixing something (centrifuge's split). Standard codes keep their meaning."""

from __future__ import annotations

from enum import IntEnum


class CloseCode(IntEnum):
    NORMAL = 1000
    GOING_AWAY = 1001  # server shutting down: reconnect to another replica
    POLICY = 1008  # flooding, bad Origin, invalid cursor
    TOO_BIG = 1009  # a frame over the hard size limit
    INTERNAL = 1011
    TRY_AGAIN_LATER = 1013
    SLOW_CONSUMER = 4001  # the client did not read fast enough: reconnect with since=
    UNAUTHORIZED = 4501  # refresh the access token before reconnecting
    TOO_MANY_SOCKETS = 4503  # the user has too many open sockets
