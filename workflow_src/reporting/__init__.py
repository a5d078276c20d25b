"""The report (the top layer): results.csv, Tables 3 and 4, the paper comparison, the export
tables, the sample figures and index.html."""
