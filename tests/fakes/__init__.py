"""Fakes of the SaaS APIs certpager talks to: real servers on loopback, never mocks."""
