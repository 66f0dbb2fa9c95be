"""Reports for people: the bridge as a table, CSV or JSON, a chart, one HTML page, and file exports."""
