"""Run a program under an isolation policy with hard limits (issue 5).

This layer knows nothing about graphs or stages: it runs *a program* under
*a policy* with *limits* and reports one Result.
"""
