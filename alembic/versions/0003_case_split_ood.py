"""cases: the stored side of the retraining split and the case-level out-of-distribution flag

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-03 15:30:00.000000

``cases.split`` ('train' | 'validation', NULL until the first correction) is decided once, at the first
correction, and never changed. Cases corrected before this revision keep the side the old hash split gave
them (sha256 of the case id mod 100 < DUALSEG_RETRAIN_VAL_PERCENT, default 20), so no run's validation set
is reshuffled by the upgrade.
"""

import hashlib
import os
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = '0003'
down_revision: str | None = '0002'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _old_side(case_id: str, percent: int) -> str:
    return 'validation' if int(hashlib.sha256(case_id.encode()).hexdigest()[:8], 16) % 100 < percent else 'train'


def upgrade() -> None:
    with op.batch_alter_table('cases', schema=None) as batch_op:
        batch_op.add_column(sa.Column('split', sa.String(length=16), nullable=True))
        batch_op.add_column(sa.Column('split_at', sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column('ood_score', sa.Float(), nullable=True))
        batch_op.add_column(sa.Column('out_of_distribution', sa.Boolean(), nullable=True))
        batch_op.add_column(sa.Column('ood_reason', sa.Text(), nullable=True))
        batch_op.create_index(batch_op.f('ix_cases_split'), ['split'], unique=False)
    percent = int(os.environ.get('DUALSEG_RETRAIN_VAL_PERCENT', '20'))
    bind = op.get_bind()
    rows = bind.execute(sa.text(
        'SELECT c.id, MIN(k.created_at) FROM cases c JOIN corrections k ON k.case_id = c.id GROUP BY c.id'))
    for case_id, first in rows.fetchall():
        bind.execute(sa.text('UPDATE cases SET split = :s, split_at = :t WHERE id = :i'),
                     {'s': _old_side(case_id, percent), 't': first, 'i': case_id})


def downgrade() -> None:
    with op.batch_alter_table('cases', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_cases_split'))
        batch_op.drop_column('ood_reason')
        batch_op.drop_column('out_of_distribution')
        batch_op.drop_column('ood_score')
        batch_op.drop_column('split_at')
        batch_op.drop_column('split')
