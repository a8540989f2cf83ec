// Package db embeds userd's SQL migrations so that the binary can apply them
// on its own (`userd migrate`, or at start-up). The queries beside them in
// queries/ are compiled by sqlc into gen/sqlcdb.
//
// To change the schema or a function: add db/migrations/NNNNN_what.sql with
// a "-- +goose Up" and a "-- +goose Down" section, then run `make generate`,
// which regenerates db/schema.sql (the schema after every migration: read
// the current definitions there) and gen/sqlcdb. db/README.md has the rules.
package db

import "embed"

// Migrations holds migrations/*.sql.
//
//go:embed migrations/*.sql
var Migrations embed.FS
