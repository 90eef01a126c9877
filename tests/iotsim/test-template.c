/* Placeholder until the template tests land. */
int main(void)
{
	return 77;
}
