-- Port fields of later microversions: a name (1.88), a description (1.97), the NIC's vendor
-- (1.100) and category (1.101), and whether it is a smart NIC (1.53).
ALTER TABLE ports ADD COLUMN name TEXT;
ALTER TABLE ports ADD COLUMN description TEXT;
ALTER TABLE ports ADD COLUMN vendor TEXT;
ALTER TABLE ports ADD COLUMN category TEXT;
ALTER TABLE ports ADD COLUMN is_smartnic INTEGER NOT NULL DEFAULT 0;
