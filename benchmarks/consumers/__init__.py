"""The throughput candidates: one module per consumer, each run as its own process.

Every module is started the same way and measured the same way (see `_common`):

    python -m benchmarks.consumers.NAME --url URL --queue Q --expected N --result FILE

It consumes `N` messages from the (already filled) queue `Q`, decodes each JSON body,
acknowledges each message on its own, and writes its measurements to `FILE` as JSON.
"""
