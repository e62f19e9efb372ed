//! How each Rust type of a result field maps to an Arrow column: its type,
//! nullability, how a slice of values becomes an array and how one value is
//! read back. [`super::ResultRow`]'s fields are declared once, with their
//! column names, and everything else (schema, writer, reader) follows from
//! these impls.

use super::{Pass, Source};
use crate::plan::{Gate, Policy};
use arrow::array::{
    Array, ArrayRef, BooleanArray, Float64Array, ListArray, StringArray, UInt32Array, UInt64Array,
};
use arrow::datatypes::{DataType, Field, UInt64Type};
use std::sync::Arc;

/// A field type that is one results column.
pub trait Column: Sized {
    fn data_type() -> DataType;
    const NULLABLE: bool = false;
    fn to_array<'a>(values: impl Iterator<Item = &'a Self>) -> ArrayRef
    where
        Self: 'a;
    /// The array type the column must have, checked once per batch.
    fn accepts(a: &dyn Array) -> bool;
    /// Row `i` of a column [`Column::accepts`] said yes to; `Err` names
    /// what the value was when it is not one this build knows.
    fn get(a: &dyn Array, i: usize) -> Result<Self, String>;
}

fn cast<T: 'static>(a: &dyn Array) -> &T {
    a.as_any().downcast_ref::<T>().expect("checked by accepts")
}

macro_rules! primitive {
    ($t:ty, $arr:ty, $dt:expr) => {
        impl Column for $t {
            fn data_type() -> DataType {
                $dt
            }
            fn to_array<'a>(values: impl Iterator<Item = &'a Self>) -> ArrayRef {
                Arc::new(<$arr>::from_iter_values(values.copied()))
            }
            fn accepts(a: &dyn Array) -> bool {
                a.as_any().is::<$arr>()
            }
            fn get(a: &dyn Array, i: usize) -> Result<Self, String> {
                Ok(cast::<$arr>(a).value(i))
            }
        }
    };
}

primitive!(u32, UInt32Array, DataType::UInt32);
primitive!(u64, UInt64Array, DataType::UInt64);
primitive!(f64, Float64Array, DataType::Float64);

impl Column for bool {
    fn data_type() -> DataType {
        DataType::Boolean
    }
    fn to_array<'a>(values: impl Iterator<Item = &'a Self>) -> ArrayRef {
        Arc::new(BooleanArray::from(values.copied().collect::<Vec<_>>()))
    }
    fn accepts(a: &dyn Array) -> bool {
        a.as_any().is::<BooleanArray>()
    }
    fn get(a: &dyn Array, i: usize) -> Result<Self, String> {
        Ok(cast::<BooleanArray>(a).value(i))
    }
}

impl Column for Option<f64> {
    const NULLABLE: bool = true;
    fn data_type() -> DataType {
        DataType::Float64
    }
    fn to_array<'a>(values: impl Iterator<Item = &'a Self>) -> ArrayRef {
        Arc::new(Float64Array::from(values.copied().collect::<Vec<_>>()))
    }
    fn accepts(a: &dyn Array) -> bool {
        a.as_any().is::<Float64Array>()
    }
    fn get(a: &dyn Array, i: usize) -> Result<Self, String> {
        let a = cast::<Float64Array>(a);
        Ok((!a.is_null(i)).then(|| a.value(i)))
    }
}

impl Column for String {
    fn data_type() -> DataType {
        DataType::Utf8
    }
    fn to_array<'a>(values: impl Iterator<Item = &'a Self>) -> ArrayRef {
        Arc::new(StringArray::from_iter_values(values.map(String::as_str)))
    }
    fn accepts(a: &dyn Array) -> bool {
        a.as_any().is::<StringArray>()
    }
    fn get(a: &dyn Array, i: usize) -> Result<Self, String> {
        Ok(cast::<StringArray>(a).value(i).to_string())
    }
}

impl Column for Vec<u64> {
    fn data_type() -> DataType {
        DataType::List(Arc::new(Field::new("item", DataType::UInt64, true)))
    }
    fn to_array<'a>(values: impl Iterator<Item = &'a Self>) -> ArrayRef {
        Arc::new(ListArray::from_iter_primitive::<UInt64Type, _, _>(
            values.map(|v| Some(v.iter().map(|&x| Some(x)).collect::<Vec<_>>())),
        ))
    }
    fn accepts(a: &dyn Array) -> bool {
        a.as_any().is::<ListArray>()
    }
    fn get(a: &dyn Array, i: usize) -> Result<Self, String> {
        let v = cast::<ListArray>(a).value(i);
        Ok(v.as_any()
            .downcast_ref::<UInt64Array>()
            .map(|x| x.values().to_vec())
            .unwrap_or_default())
    }
}

/// Closed sets are stored as their names, so the files stay plain strings.
macro_rules! named {
    ($t:ty) => {
        impl Column for $t {
            fn data_type() -> DataType {
                DataType::Utf8
            }
            fn to_array<'a>(values: impl Iterator<Item = &'a Self>) -> ArrayRef {
                Arc::new(StringArray::from_iter_values(values.map(|v| v.as_str())))
            }
            fn accepts(a: &dyn Array) -> bool {
                a.as_any().is::<StringArray>()
            }
            fn get(a: &dyn Array, i: usize) -> Result<Self, String> {
                cast::<StringArray>(a)
                    .value(i)
                    .parse()
                    .map_err(|e| format!("{e}"))
            }
        }
    };
}

named!(Policy);
named!(Source);
named!(Pass);

/// The gate is stored as the `lambda` column: the threshold, or null for
/// "always" and for rows of policies without a gate. Reading gives
/// `Always` for null; [`super::ResultRow::settle_gate`] then turns the
/// gateless policies' rows into `Never`.
impl Column for Gate {
    const NULLABLE: bool = true;
    fn data_type() -> DataType {
        DataType::Float64
    }
    fn to_array<'a>(values: impl Iterator<Item = &'a Self>) -> ArrayRef {
        Arc::new(Float64Array::from(
            values.map(|g| g.lambda()).collect::<Vec<_>>(),
        ))
    }
    fn accepts(a: &dyn Array) -> bool {
        a.as_any().is::<Float64Array>()
    }
    fn get(a: &dyn Array, i: usize) -> Result<Self, String> {
        Ok(Option::<f64>::get(a, i)?.map_or(Gate::Always, Gate::Ratio))
    }
}
