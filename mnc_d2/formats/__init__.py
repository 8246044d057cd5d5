"""File formats read and written by mnc_d2 (SpaceNet CSVs, GeoJSON); torch-free."""
