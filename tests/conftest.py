"""Shared fixtures. Each real dependency has its own plugin module under tests/fixtures/."""

pytest_plugins = [
    "tests.fixtures.kafka",
    "tests.fixtures.postgres",
    "tests.fixtures.sandbox",
    "tests.fixtures.secure_kafka",
]
