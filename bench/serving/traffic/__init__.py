"""Load generation and the client: requests of a stated length, shared-prefix requests, arrival schedules and
load levels, the async streaming client, and its self-check against the stub.
"""
