"""Shared fixtures. The test process is a producer: it gets the same Redis and card key as workers."""
from tests.support.env import apply_to_this_process

apply_to_this_process()
