//! Declared state and the per-batch view of it.
//!
//! A function declares its state cells with [`ValueSpec`]s. For each batch the runtime sends
//! the current value of every declared cell; [`Storage`] holds them while the handler runs
//! and records which cells were written or cleared, because only those go back as mutations.
//! Values stay encoded between accesses: a cell is decoded only when read, so a cell of a
//! type the handler never reads cannot fail the batch.

use std::time::Duration;

use keyflow_protocol::reqreply::from_function::{
    expiration_spec::ExpireMode, persisted_value_mutation::MutationType, ExpirationSpec,
    PersistedValueMutation, PersistedValueSpec,
};
use keyflow_protocol::reqreply::to_function::PersistedValue;
use keyflow_protocol::TypedValue;

use crate::{Error, Type};

/// When the runtime drops a state value that nobody refreshes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Expiration {
    #[default]
    Never,
    /// Expires `Duration` after the last write.
    AfterWrite(Duration),
    /// Expires `Duration` after the last read or write.
    AfterInvoke(Duration),
}

impl Expiration {
    pub const fn after_write(ttl: Duration) -> Self {
        Expiration::AfterWrite(ttl)
    }

    pub const fn after_invoke(ttl: Duration) -> Self {
        Expiration::AfterInvoke(ttl)
    }

    fn to_proto(self) -> ExpirationSpec {
        let (mode, ttl) = match self {
            Expiration::Never => (ExpireMode::None, Duration::ZERO),
            Expiration::AfterWrite(ttl) => (ExpireMode::AfterWrite, ttl),
            Expiration::AfterInvoke(ttl) => (ExpireMode::AfterInvoke, ttl),
        };
        ExpirationSpec {
            mode: mode as i32,
            expire_after_millis: i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX),
        }
    }
}

/// A declared state cell holding values of type `T`.
///
/// ```
/// use std::time::Duration;
/// use keyflow_sdk::{Expiration, Type, ValueSpec};
///
/// const VISITS: ValueSpec<i32> = ValueSpec::new("visits", Type::int())
///     .expiring(Expiration::after_invoke(Duration::from_secs(3600)));
/// ```
#[derive(Debug)]
pub struct ValueSpec<T> {
    name: &'static str,
    ty: Type<T>,
    expiration: Expiration,
}

impl<T> Clone for ValueSpec<T> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<T> Copy for ValueSpec<T> {}

impl<T> ValueSpec<T> {
    /// A cell that never expires.
    pub const fn new(name: &'static str, ty: Type<T>) -> Self {
        ValueSpec {
            name,
            ty,
            expiration: Expiration::Never,
        }
    }

    pub const fn expiring(self, expiration: Expiration) -> Self {
        ValueSpec { expiration, ..self }
    }

    pub fn name(&self) -> &'static str {
        self.name
    }

    pub(crate) fn erase(&self) -> StateSpec {
        StateSpec {
            name: self.name,
            typename: self.ty.typename(),
            expiration: self.expiration,
        }
    }
}

/// A [`ValueSpec`] without its Rust type: what the protocol needs to know about a cell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct StateSpec {
    pub(crate) name: &'static str,
    pub(crate) typename: &'static str,
    pub(crate) expiration: Expiration,
}

impl StateSpec {
    pub(crate) fn to_proto(self) -> PersistedValueSpec {
        PersistedValueSpec {
            state_name: self.name.to_owned(),
            expiration_spec: Some(self.expiration.to_proto()),
            type_typename: self.typename.to_owned(),
        }
    }
}

#[derive(Debug)]
struct Cell {
    spec: StateSpec,
    value: Option<TypedValue>,
    changed: bool,
}

/// The state cells of one address during one batch.
#[derive(Debug)]
pub struct Storage {
    cells: Vec<Cell>,
}

impl Storage {
    /// Picks the declared cells out of the state the runtime sent, or returns the specs of
    /// the cells it did not send, which the runtime must register before anything can run.
    pub(crate) fn load(
        specs: &[StateSpec],
        mut sent: Vec<PersistedValue>,
    ) -> Result<Self, Vec<StateSpec>> {
        let mut cells = Vec::with_capacity(specs.len());
        let mut missing = Vec::new();
        for spec in specs {
            match sent.iter().position(|v| v.state_name == spec.name) {
                Some(i) => {
                    let value = sent.swap_remove(i).state_value.filter(|v| v.has_value);
                    cells.push(Cell {
                        spec: *spec,
                        value,
                        changed: false,
                    });
                }
                None => missing.push(*spec),
            }
        }
        if missing.is_empty() {
            Ok(Storage { cells })
        } else {
            Err(missing)
        }
    }

    /// The cell's value, `None` when it is empty (never set, cleared or expired).
    pub fn get<T>(&self, spec: &ValueSpec<T>) -> Result<Option<T>, Error> {
        let cell = self.cell(spec)?;
        let Some(value) = &cell.value else {
            return Ok(None);
        };
        if value.typename != cell.spec.typename {
            return Err(Error::StoredStateType {
                name: spec.name.to_owned(),
                declared: cell.spec.typename.to_owned(),
                found: value.typename.clone(),
            });
        }
        spec.ty.decode(value).map(Some)
    }

    pub fn set<T>(&mut self, spec: &ValueSpec<T>, value: &T) -> Result<(), Error> {
        let encoded = spec.ty.encode(value)?;
        let cell = self.cell_mut(spec)?;
        cell.value = Some(encoded);
        cell.changed = true;
        Ok(())
    }

    pub fn clear<T>(&mut self, spec: &ValueSpec<T>) -> Result<(), Error> {
        let cell = self.cell_mut(spec)?;
        cell.value = None;
        cell.changed = true;
        Ok(())
    }

    /// The mutations of the cells written or cleared since [`Storage::load`], in declaration
    /// order.
    pub(crate) fn into_mutations(self) -> Vec<PersistedValueMutation> {
        self.cells
            .into_iter()
            .filter(|c| c.changed)
            .map(|c| {
                let mutation_type = if c.value.is_some() {
                    MutationType::Modify
                } else {
                    MutationType::Delete
                };
                PersistedValueMutation {
                    mutation_type: mutation_type as i32,
                    state_name: c.spec.name.to_owned(),
                    state_value: c.value,
                }
            })
            .collect()
    }

    fn position<T>(&self, spec: &ValueSpec<T>) -> Result<usize, Error> {
        let i = self
            .cells
            .iter()
            .position(|c| c.spec.name == spec.name)
            .ok_or_else(|| Error::UndeclaredState {
                name: spec.name.to_owned(),
            })?;
        let declared = self.cells[i].spec.typename;
        if declared != spec.ty.typename() {
            return Err(Error::StateSpecMismatch {
                name: spec.name.to_owned(),
                declared: declared.to_owned(),
                requested: spec.ty.typename().to_owned(),
            });
        }
        Ok(i)
    }

    fn cell<T>(&self, spec: &ValueSpec<T>) -> Result<&Cell, Error> {
        self.position(spec).map(|i| &self.cells[i])
    }

    fn cell_mut<T>(&mut self, spec: &ValueSpec<T>) -> Result<&mut Cell, Error> {
        self.position(spec).map(|i| &mut self.cells[i])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use keyflow_protocol::builtin;

    const COUNT: ValueSpec<i32> = ValueSpec::new("count", Type::int());
    const NAME: ValueSpec<String> = ValueSpec::new("name", Type::string())
        .expiring(Expiration::after_write(Duration::from_millis(1500)));

    fn sent(name: &str, value: Option<TypedValue>) -> PersistedValue {
        PersistedValue {
            state_name: name.into(),
            state_value: value,
        }
    }

    fn storage(values: Vec<PersistedValue>) -> Storage {
        Storage::load(&[COUNT.erase(), NAME.erase()], values).unwrap()
    }

    #[test]
    fn missing_cells_are_listed_with_their_specs() {
        let missing =
            Storage::load(&[COUNT.erase(), NAME.erase()], vec![sent("count", None)]).unwrap_err();
        assert_eq!(missing, vec![NAME.erase()]);
        let spec = missing[0].to_proto();
        assert_eq!(spec.type_typename, builtin::STRING);
        assert_eq!(
            spec.expiration_spec.unwrap(),
            ExpirationSpec {
                mode: 1,
                expire_after_millis: 1500
            }
        );
    }

    #[test]
    fn empty_and_absent_values_read_as_none() {
        let empty = TypedValue {
            typename: builtin::INT.into(),
            has_value: false,
            value: Default::default(),
        };
        let s = storage(vec![sent("count", Some(empty)), sent("name", None)]);
        assert_eq!(s.get(&COUNT).unwrap(), None);
        assert_eq!(s.get(&NAME).unwrap(), None);
    }

    #[test]
    fn reading_is_not_a_mutation() {
        let s = storage(vec![
            sent("count", Some(builtin::encode_int(1))),
            sent("name", None),
        ]);
        assert_eq!(s.get(&COUNT).unwrap(), Some(1));
        assert!(s.into_mutations().is_empty());
    }

    #[test]
    fn written_and_cleared_cells_become_modify_and_delete() {
        let mut s = storage(vec![
            sent("count", Some(builtin::encode_int(1))),
            sent("name", None),
        ]);
        s.clear(&COUNT).unwrap();
        s.set(&NAME, &"x".to_owned()).unwrap();
        assert_eq!(s.get(&NAME).unwrap().as_deref(), Some("x"));
        let m = s.into_mutations();
        assert_eq!(m.len(), 2);
        assert_eq!(
            (m[0].mutation_type, m[0].state_name.as_str()),
            (MutationType::Delete as i32, "count")
        );
        assert_eq!(m[0].state_value, None);
        assert_eq!(
            (m[1].mutation_type, m[1].state_name.as_str()),
            (MutationType::Modify as i32, "name")
        );
        assert_eq!(m[1].state_value, Some(builtin::encode_string("x".into())));
    }

    #[test]
    fn a_stored_value_of_another_type_is_a_clear_error() {
        let s = storage(vec![
            sent("count", Some(builtin::encode_long(1))),
            sent("name", None),
        ]);
        let err = s.get(&COUNT).unwrap_err();
        assert!(matches!(err, Error::StoredStateType { .. }));
        assert!(
            err.to_string().contains("`io.statefun.types/long`"),
            "{err}"
        );
        assert!(err.to_string().contains("`io.statefun.types/int`"), "{err}");
    }

    #[test]
    fn accessing_a_cell_with_another_spec_is_refused() {
        const COUNT_AS_LONG: ValueSpec<i64> = ValueSpec::new("count", Type::long());
        const UNDECLARED: ValueSpec<i32> = ValueSpec::new("other", Type::int());
        let mut s = storage(vec![sent("count", None), sent("name", None)]);
        assert!(matches!(
            s.set(&COUNT_AS_LONG, &1),
            Err(Error::StateSpecMismatch { .. })
        ));
        assert!(matches!(
            s.get(&UNDECLARED),
            Err(Error::UndeclaredState { .. })
        ));
    }
}
