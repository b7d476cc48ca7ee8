"""Scheduled (nightly) runs: the configuration (config), the nights'
folders with their lock, Allure history and retention (folders), the run
of every build (runner) and the systemd units that start it (units)."""
