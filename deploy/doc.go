// Package deploy holds no code: it is the home of the production files
// (systemd units, sysctl settings, Prometheus scrape config and alert
// rules, the Grafana dashboard; see README.md) and of the tests that keep
// them valid and in step with the metrics the binaries export.
package deploy
