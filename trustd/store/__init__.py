"""Storage: tables (SQLModel), migrations (Alembic), the transaction boundary.

Every table module lives in this package, so the naming convention is set here, before any
table can be defined: constraint names are then the same on SQLite and PostgreSQL whatever
module is imported first.
"""

from sqlmodel import SQLModel

SQLModel.metadata.naming_convention = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}
