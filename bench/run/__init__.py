"""Running cases: the runner (one fresh process per case, timeouts, resume), the worker inside that
process, the worker's result protocol, the environment fingerprint and managed side environments."""
