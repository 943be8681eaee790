"""Server launchers: child processes that never outlive bench, one class per server kind, their
start and stop, llama.cpp's launcher, the stub server.
"""
