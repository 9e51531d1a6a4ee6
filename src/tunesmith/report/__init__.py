"""report.html: what a run did and whether it helped, readable without any tool."""
