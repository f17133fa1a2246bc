"""Small pools for end-to-end tests of the `foxwork` command, run as subprocesses:
`foxwork run tests.apps.slow:pool ...`. They report what they do through files named by
environment variables (see each module), which the tests read back."""
