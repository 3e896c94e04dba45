"""The API's routes, one :class:`fastapi.APIRouter` per protocol: ``ops`` (health, readiness, metrics),
``chat`` (+ ``chat_stream``, its SSE answer), ``search`` and ``programs``; ``shared`` holds the steps
they all take."""
