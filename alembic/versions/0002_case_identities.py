"""case identities: the private mapping of de-identified cases

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26 08:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = '0002'
down_revision: str | None = '0001'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('case_identities',
    sa.Column('case_id', sa.String(length=32), nullable=False),
    sa.Column('pseudonym', sa.String(length=64), nullable=False),
    sa.Column('identifiers', sa.Text(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['case_id'], ['cases.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('case_id')
    )
    with op.batch_alter_table('case_identities', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_case_identities_pseudonym'), ['pseudonym'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('case_identities', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_case_identities_pseudonym'))

    op.drop_table('case_identities')
