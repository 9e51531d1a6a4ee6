"""Reading, mapping, splitting and reporting the data a method trains on."""
