-- A few records of the split old unit Thị trấn Lai Uyên: two quarters of Bàu Bàng, one of
-- Trừ Văn Thố, one that no rule names (quarantine). Fixed ids: re-running inserts nothing.
\set ON_ERROR_STOP on
-- Once seeded, insert nothing (the unit may be frozen by then: even a conflicting insert is refused).
SELECT EXISTS (SELECT 1 FROM docs.documents WHERE id = '00000000-0000-4000-8000-000000000001') AS seeded \gset
\if :seeded
SELECT 0 AS inserted;
\q
\endif
BEGIN;
WITH ins AS (
  INSERT INTO docs.documents (id, unit, residential_quarter, number, title, created_at, updated_at) VALUES
    ('00000000-0000-4000-8000-000000000001', 'thi-tran-lai-uyen--huyen-bau-bang', 'Khu phố Cầu Sắt', '1/UBND', 'Về việc kiện toàn tổ dân phố', '2025-01-02T08:00:00+07', '2025-01-02T08:00:00+07'),
    ('00000000-0000-4000-8000-000000000002', 'thi-tran-lai-uyen--huyen-bau-bang', 'Khu phố Bàu Bàng', '2/UBND', 'Về việc quản lý trật tự xây dựng', '2025-01-03T08:00:00+07', '2025-01-03T08:00:00+07'),
    ('00000000-0000-4000-8000-000000000003', 'thi-tran-lai-uyen--huyen-bau-bang', 'Khu phố Bàu Lòng', '3/UBND', 'Về việc tiếp công dân', '2025-01-04T08:00:00+07', '2025-01-04T08:00:00+07'),
    ('00000000-0000-4000-8000-000000000004', 'thi-tran-lai-uyen--huyen-bau-bang', 'Khu phố không rõ', '4/UBND', 'Về việc rà soát hộ nghèo', '2025-01-05T08:00:00+07', '2025-01-05T08:00:00+07')
  ON CONFLICT DO NOTHING RETURNING 1),
att AS (
  INSERT INTO docs.attachments (id, unit, residential_quarter, document_id, file_name, store_path, size_bytes, sha256, created_at, updated_at) VALUES
    ('00000000-0000-4000-8000-0000000000a1', 'thi-tran-lai-uyen--huyen-bau-bang', 'Khu phố Cầu Sắt', '00000000-0000-4000-8000-000000000001',
     'quyet-dinh.pdf', 'thi-tran-lai-uyen--huyen-bau-bang/00000000-0000-4000-8000-0000000000a1-quyet-dinh.pdf', 18,
     'b3b2c6c5d1a3e1e9b1d8d6c4b1a2f3e4d5c6b7a8f9e0d1c2b3a4f5e6d7c8b9a0', '2025-01-02T08:00:00+07', '2025-01-02T08:00:00+07')
  ON CONFLICT DO NOTHING RETURNING 1),
dos AS (
  INSERT INTO procedures.dossiers (id, unit, residential_quarter, code, procedure_code, applicant_name, received_at, created_at, updated_at) VALUES
    ('00000000-0000-4000-8000-0000000000d1', 'thi-tran-lai-uyen--huyen-bau-bang', 'Khu phố Xà Mách', 'BD-1', '1.004227', 'Nguyễn Văn An', '2025-01-06T08:00:00+07', '2025-01-06T08:00:00+07', '2025-01-06T08:00:00+07')
  ON CONFLICT DO NOTHING RETURNING 1)
SELECT (SELECT count(*) FROM ins) + (SELECT count(*) FROM att) + (SELECT count(*) FROM dos) AS inserted;
COMMIT;
