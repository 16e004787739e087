use super::*;

pub fn flag_expensive(rows: FlagExpensiveInput) -> PolarsResult<FlagExpensiveOutput> {
    let expensive = rows.fair.gt(50.0);
    Ok(FlagExpensiveOutput {
        trip_id: rows.trip_id,
        expensive,
    })
}
